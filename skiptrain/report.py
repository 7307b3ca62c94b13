"""What `validate` and `graph` show: rich tables, JSON, Mermaid and Graphviz text."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from .compute import count, macs_text
from .graph import INPUT
from .merges import FROM_FIRST, MERGES
from .shapes import ModelPlan
from .tying import as_json as tied_json, describe as tied_text, summary as tied_summary


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def literal_row(cells) -> list[Text]:
    """A table row shown as written: class names, file names and ids are never read as rich markup."""
    return [Text(str(cell)) for cell in cells]


def plan_json(plan: ModelPlan) -> dict[str, Any]:
    graph = plan.graph
    compute = count(plan)
    return {
        "name": graph.name,
        "input_shape": list(graph.input_shape),
        "input_dtype": graph.input_dtype,
        "output_shape": list(plan.output_shape),
        "params": plan.params,
        "projection_params": plan.projection_params,
        "macs": compute.macs,  # multiply-adds per sample (torch's FlopCounterMode / 2)
        "projection_macs": compute.projection_macs,
        "projection_macs_share": compute.projection_share,
        "nodes": [{"id": n.id, "type": n.type, "inputs": n.inputs, "output_shape": list(n.meta["shape"]),
                   "params": n.meta["params"], "macs": n.meta["macs"], **tied_json(n)} for n in graph.order],
        "skips": [{"from": s.source, "to": s.target, "merge": s.merge, "projection": s.projection,
                   "order": s.order, "operands": operands(graph, s), "broadcast": s.meta.get("broadcast"),
                   "shape": list(s.meta["shape"]) if "shape" in s.meta else None}
                  for s in graph.skips],
        "projections": [{"id": p.id, "from": p.skip.source, "to": p.skip.target, "kind": p.kind,
                         "in_shape": list(p.in_shape), "out_shape": list(p.out_shape), "params": p.params,
                         "macs": p.skip.meta["macs"]}
                        for p in plan.projections.values()],
        "warnings": plan.warnings,
    }


def operands(graph, skip) -> list[str]:
    """The merge's operands in the order joined: `to`'s value (a merge layer's value so far) and `from`."""
    into = graph.skips_into(skip.target)
    to = graph.nodes[skip.target].inputs[0] if skip.implicit and into and into[0] is skip else skip.target
    return [skip.source, to] if skip.order == FROM_FIRST else [to, skip.source]


def skip_text(plan: ModelPlan, skip) -> str:
    """One skip in the "skips in" column: `add stem`, `concat [stem, conv2]`, `mul gate, broadcast ...`."""
    if MERGES.get(skip.merge).ordered:
        return f"{skip.merge} [{', '.join(operands(plan.graph, skip))}]"
    side = skip.meta.get("broadcast")
    if side is None:
        return f"{skip.merge} {skip.source}"
    stretched = {"from": skip.source, "to": operands(plan.graph, skip)[0], "both": "both sides"}[side]
    return f"{skip.merge} {skip.source}, broadcast {stretched} to {shape_text(skip.meta['shape'])}"


def share(params: int, total: int) -> str:
    return f"{100 * params / total:.2f}%" if total else "-"


def node_table(plan: ModelPlan) -> Table:
    graph = plan.graph
    count(plan)
    table = Table(title=Text(f"{graph.name}: input {shape_text(graph.input_shape)} {graph.input_dtype}"),
                  title_justify="left")
    for column, justify in (("id", "left"), ("type", "left"), ("output shape", "left"),
                            ("params", "right"), ("MACs", "right"), ("skips in", "left")):
        table.add_column(column, justify=justify)
    for node in graph.order:
        merges = []
        for skip in graph.skips_into(node.id):
            proj = plan.projection_for(skip)
            merges.append(skip_text(plan, skip) + (f" via {proj.id}" if proj else ""))
        params = f"{node.meta['params']:,}" + (f" ({tied_text(node)})" if "tied" in node.meta else "")
        table.add_row(Text(node.id), Text(node.type), shape_text(node.meta["shape"]), Text(params),
                      f"{node.meta['macs']:,}", Text("\n".join(merges), style="cyan"))
    return table


def projection_table(plan: ModelPlan) -> Table:
    table = Table(title="projections inserted on mismatched skips", title_justify="left")
    total = count(plan).macs
    numbers = ("params", "share", "MACs", "MACs share")
    for column in ("projection", "skip", "kind", "shape", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for p in plan.projections.values():
        table.add_row(Text(p.id), Text(f"{p.skip.source} -> {p.skip.target}"), Text(p.description),
                      f"{shape_text(p.in_shape)} -> {shape_text(p.out_shape)}", f"{p.params:,}",
                      share(p.params, plan.params), f"{p.skip.meta['macs']:,}", share(p.skip.meta["macs"], total))
    return table


def summary_lines(plan: ModelPlan) -> list[str]:
    compute = count(plan)
    lines = [
        f"nodes: {len(plan.graph.nodes)}   skips: {len(plan.graph.skips)}   "
        f"projections: {len(plan.projections)}" + _broadcasts(plan),
        f"parameters: {plan.params:,} (layers {plan.layer_params:,}, projections "
        f"{plan.projection_params:,} = {share(plan.projection_params, plan.params)})",
        f"multiply-adds per sample: {compute.macs:,} = {macs_text(compute.macs)}MACs (layers "
        f"{compute.layer_macs:,}, projections {compute.projection_macs:,} = "
        f"{share(compute.projection_macs, compute.macs)})",
        f"output: `{plan.graph.output}` {shape_text(plan.output_shape)} {plan.output_dtype}",
    ]
    return lines + tied_summary(plan.graph) + [f"warning: {w}" for w in plan.warnings]


def _broadcasts(plan: ModelPlan) -> str:
    count = sum(1 for s in plan.graph.skips if s.meta.get("broadcast"))
    return f"   broadcasts: {count} (no projection)" if count else ""


def _label(plan: ModelPlan, node_id: str) -> str:
    if node_id == INPUT:
        return f"input {shape_text(plan.graph.input_shape)}"
    node = plan.graph.nodes[node_id]
    return f"{node_id}: {node.type} {shape_text(node.meta['shape'])}"


def _merge_label(skip) -> str:
    """A skip edge's merge, with what is not the default: `mul, broadcast from`, `concat, from first`."""
    extra = [f"broadcast {skip.meta['broadcast']}"] if skip.meta.get("broadcast") else []
    extra += ["from first"] if skip.order == FROM_FIRST else []
    return ", ".join([skip.merge, *extra])


def _dot_text(text: str) -> str:
    """Text for inside a DOT double-quoted string: a quote or backslash of the user's is escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _mermaid_text(text: str) -> str:
    """Text for inside a Mermaid quoted label: a quote becomes the entity `#quot;`."""
    return text.replace('"', "#quot;")


def _safe(node_id: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in node_id)


def mermaid(plan: ModelPlan) -> str:
    graph = plan.graph
    lines = ["flowchart TD", f'  {_safe(INPUT)}(["{_mermaid_text(_label(plan, INPUT))}"])']
    lines += [f'  {_safe(n.id)}["{_mermaid_text(_label(plan, n.id))}"]' for n in graph.order]
    lines += [f"  {_safe(src)} --> {_safe(n.id)}" for n in graph.order for src in n.inputs]
    for skip in graph.skips:
        proj = plan.projection_for(skip)
        label = _merge_label(skip) + (f": {proj.description}, {proj.params:,} params" if proj else "")
        lines.append(f'  {_safe(skip.source)} -. "{_mermaid_text(label)}" .-> {_safe(skip.target)}')
    return "\n".join(lines) + "\n"


def dot(plan: ModelPlan) -> str:
    graph = plan.graph
    lines = [f'digraph "{_dot_text(graph.name)}" {{', "  rankdir=TB;", "  node [shape=box, fontname=Helvetica];",
             f'  {_safe(INPUT)} [label="{_dot_text(_label(plan, INPUT))}", shape=oval];']
    lines += [f'  {_safe(n.id)} [label="{_dot_text(_label(plan, n.id))}"];' for n in graph.order]
    lines += [f"  {_safe(src)} -> {_safe(n.id)};" for n in graph.order for src in n.inputs]
    for skip in graph.skips:
        proj = plan.projection_for(skip)
        label = "\\n".join(_dot_text(part) for part in
                            [_merge_label(skip), *([proj.description, f"{proj.params:,} params"] if proj else [])])
        color = "red" if proj else "blue"
        lines.append(f'  {_safe(skip.source)} -> {_safe(skip.target)} '
                     f'[style=dashed, color={color}, label="{label}", constraint=false];')
    return "\n".join(lines + ["}"]) + "\n"
