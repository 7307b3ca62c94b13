"""The graph as plain data: it checks its own references and prints one line per node."""
from __future__ import annotations

import pytest

from skiptrain.errors import ConfigError, Location
from skiptrain.graph import INPUT, Graph, Node, Skip


def node(node_id: str, *inputs: str, type: str = "relu", **args) -> Node:
    return Node(node_id, type, args, list(inputs or [INPUT]))


def graph(nodes: list[Node], skips: list[Skip] = (), output: str | None = None) -> Graph:
    return Graph("g", (4,), "float32", {n.id: n for n in nodes}, list(skips), output or nodes[-1].id)


def test_a_chain_with_skips_checks_and_orders_its_nodes():
    g = graph([node("a"), node("b", "a"), node("c", "b")], [Skip("a", "c"), Skip(INPUT, "c", "concat")])
    assert [n.id for n in g.order] == ["a", "b", "c"]
    assert [(s.source, s.merge) for s in g.skips_into("c")] == [("a", "add"), (INPUT, "concat")]
    assert g.skips_into("b") == []
    assert g.edges() == [(INPUT, "a", "data"), ("a", "b", "data"), ("b", "c", "data"),
                         ("a", "c", "skip"), (INPUT, "c", "skip")]


def test_skips_into_sees_skips_added_after_the_first_look():
    g = graph([node("a"), node("b", "a")])
    assert g.skips_into("b") == []
    g.skips.append(Skip("a", "b"))
    assert [s.source for s in g.skips_into("b")] == ["a"]


@pytest.mark.parametrize("nodes, skips, output, message", [
    ([node("a", "nowhere")], [], None, "`a` reads `nowhere`, which is not a node"),
    ([node("a", "b"), node("b")], [], None, "does not come before it (that would be a cycle)"),
    ([node("a", "a")], [], None, "does not come before it"),
    ([node("a")], [Skip("a", "ghost")], None, "skip refers to `ghost`, which is not a node"),
    ([node("a")], [Skip("a", "a")], None, "skip from `a` to itself"),
    ([node("a"), node("b", "a")], [Skip("b", "a")], None, "points backwards: `a` comes first"),
    ([node("a")], [], "zzz", "output `zzz` is not a node"),
])
def test_check_refuses_bad_references(nodes, skips, output, message):
    with pytest.raises(ConfigError) as info:
        graph(nodes, skips, output)
    assert message in info.value.message


def test_errors_carry_the_location_and_a_hint():
    loc = Location("model.yaml", 7, 3)
    with pytest.raises(ConfigError) as info:
        graph([node("a"), node("b", "a")], [Skip("b", "a", loc=loc)])
    assert info.value.location == loc and "swap `from` and `to`" in info.value.hint
    with pytest.raises(ConfigError) as info:
        graph([node("a")], [Skip("a", "a", loc=loc)])
    assert info.value.location == loc and info.value.hint


def test_unused_lists_dead_branches():
    g = graph([node("a"), node("dead", "a"), node("b", "a"), node("c", "b")], [Skip(INPUT, "c")])
    assert g.unused() == ["dead"]
    assert graph([node("a"), node("b", "a")], output="a").unused() == ["b"]


def test_str_prints_one_line_per_node_and_its_skips():
    g = graph([node("a", type="linear", out_features=3), node("b", "a")], [Skip("a", "b", "mul", "none")])
    g.nodes["a"].meta["shape"] = (3,)
    assert str(g).splitlines() == [
        "graph g (input [4] float32)",
        "  a = linear(input; out_features=3) -> [3]",
        "  b = relu(a)",
        "    mul <- a (projection: none)",
        "  output b",
    ]


def test_skip_meta_is_left_out_of_equality():
    first, second = Skip("a", "b"), Skip("a", "b")
    first.meta["axis"] = 0
    assert first == second and "meta" not in repr(first)
