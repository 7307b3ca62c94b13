"""Load a config: safe YAML with the line and column of every value, and ``--set`` overrides.

Only YAML's plain types are built (``yaml.SafeLoader``): a ``!!python/...`` tag is a
config error, never executed. Dates stay the text written (no implicit timestamps), and a
config holds plain values only, so the resolved config saved in every checkpoint loads with
``weights_only=True``. Files are read through ``files.read_text`` (bounded, regular files only).
Mappings and lists remember where each item was written, so any later pass can point at the
exact line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable

import yaml

from .errors import ConfigError, Location, choices_hint
from .files import read_text

SECTIONS = ("model", "data", "train")


class LocatedDict(dict):
    """A dict that knows where it and each of its keys and values were written."""

    def __init__(self, *args: Any, loc: Location | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loc = loc
        self.key_locs: dict[Any, Location] = {}
        self.value_locs: dict[Any, Location] = {}

    def where(self, key: Any, of_key: bool = False) -> Location | None:
        """Location of ``key``'s value (or of the key itself); the dict's own as fallback."""
        locs = self.key_locs if of_key else self.value_locs
        return locs.get(key) or self.loc


class LocatedList(list):
    """A list that knows where it and each of its items were written."""

    def __init__(self, *args: Any, loc: Location | None = None):
        super().__init__(*args)
        self.loc = loc
        self.item_locs: list[Location | None] = [None] * len(self)

    def where(self, index: int) -> Location | None:
        if 0 <= index < len(self.item_locs) and self.item_locs[index]:
            return self.item_locs[index]
        return self.loc


def where(container: Any, key: Any = None) -> Location | None:
    """Location of ``container[key]`` (or of the container) when it is known."""
    if key is not None and isinstance(container, (LocatedDict, LocatedList)):
        return container.where(key)
    return getattr(container, "loc", None)


MAX_VALUES = 1_000_000  # values a document may hold once its aliases are expanded


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds Located containers and refuses duplicate keys."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a 5000-digit int, a 2001-13-45 date
            text = str(getattr(node, "value", ""))
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ConfigError(f"cannot read the value `{shown}`: {str(exc).split(';')[0]}", _node_loc(self, node),
                              "write a plain number (at most 4300 digits), string, list or mapping") from None


def _node_loc(loader: _Loader, node: yaml.Node) -> Location:
    mark = node.start_mark
    return Location(loader.source_name, mark.line + 1, mark.column + 1)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict(loc=_node_loc(loader, node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key_loc = _node_loc(loader, key_node)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError("a mapping key must be a plain value", key_loc)
        if key in result:
            raise ConfigError(f"key `{key}` is written twice in this mapping", key_loc,
                              f"the first one is at {result.key_locs[key]}; keep one of them")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_locs[key] = key_loc
        result.value_locs[key] = _node_loc(loader, value_node)
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList((loader.construct_object(child, deep=True) for child in node.value),
                         loc=_node_loc(loader, node))
    result.item_locs = [_node_loc(loader, child) for child in node.value]
    return result


def _construct_omap(loader: _Loader, node: yaml.Node) -> LocatedDict:
    """``!!omap [{a: 1}, {b: 2}]`` is a mapping (dicts keep their order)."""
    if isinstance(node, yaml.SequenceNode):
        if not all(isinstance(child, yaml.MappingNode) and len(child.value) == 1 for child in node.value):
            raise ConfigError("`!!omap` needs a list of one-key mappings", _node_loc(loader, node),
                              "write a plain mapping instead")
        node = yaml.MappingNode(node.tag, [child.value[0] for child in node.value], node.start_mark, node.end_mark)
    return _construct_mapping(loader, node)


def _construct_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    """``!!timestamp 2024-06-01`` stays the text written: a date object would go into every
    checkpoint, and ``torch.load(weights_only=True)`` refuses it."""
    return str(loader.construct_scalar(node))


def _refuse_tag(loader: _Loader, node: yaml.Node) -> Any:
    raise ConfigError(f"YAML tag `{node.tag.replace('tag:yaml.org,2002:', '!!')}` is not supported here",
                      _node_loc(loader, node), "a config holds mappings, lists, text, numbers, booleans "
                      "and null only; write the value as a list or as text")


# Dates are text: drop YAML 1.1's implicit timestamp rule (``name: 2024-06-01`` is a string).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in rules if tag != "tag:yaml.org,2002:timestamp"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)
for _tag in ("binary", "set", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:omap", _construct_omap)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def parse_yaml(text: str, source_name: str) -> Any:
    """Parse YAML text into Located containers; every failure is a located ConfigError."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character: the reader checks the text first
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(f"invalid YAML: character U+{exc.character:04X} is not allowed",
                          Location(source_name, line, column),
                          "remove the control character (YAML allows tabs and newlines only)") from None
    loader.source_name = source_name
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_VALUES:
            raise ConfigError(f"the YAML holds more than {MAX_VALUES:,} values once its aliases are expanded",
                              _node_loc(loader, node), "each `*alias` repeats everything its `&anchor` holds; "
                              "aliases of aliases multiply. Write the values out, or use blocks and `repeat:`")
        return loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply", Location(source_name),
                          "a config needs a few levels of mappings and lists, not hundreds") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(source_name, mark.line + 1, mark.column + 1) if mark else Location(source_name)
        problem = exc.problem or "unsupported value"
        if "python/" in problem or "tag" in problem:
            raise ConfigError(f"YAML tag refused: {problem}", loc,
                              "skiptrain reads plain YAML only; tags that build Python "
                              "objects are never executed. Remove the `!!...` tag.") from None
        raise ConfigError(problem, loc) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(source_name, mark.line + 1, mark.column + 1) if mark else Location(source_name)
        raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", loc,
                          "check indentation, colons and brackets on this line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", Location(source_name)) from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` holds with every alias expanded: linear in the nodes, not in the result."""
    if id(node) not in sizes:
        sizes[id(node)] = 1  # a node inside itself: the constructor refuses it
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a link to a device, a FIFO, a folder, a huge or non-UTF-8 file is a ConfigError."""
    return parse_yaml(read_text(path, "config", hint="configs are YAML files such as configs/quickstart.yaml"),
                      str(path))


@dataclass
class Config:
    """A loaded config: its three sections as Located containers, and where it came from."""

    model: LocatedDict
    data: LocatedDict = field(default_factory=LocatedDict)
    train: LocatedDict = field(default_factory=LocatedDict)
    path: Path | None = None

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (for saving the resolved config)."""
        return {"model": plain(self.model), "data": plain(self.data), "train": plain(self.train)}


PLAIN_TYPES = (str, int, float, bool, type(None))


def plain(value: Any) -> Any:
    """Strip location bookkeeping: plain dicts and lists all the way down (what checkpoints hold)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def refuse_objects(value: Any, dotted: str, loc: Location | None = None) -> None:
    """Only plain values may enter a config: anything else (a date, bytes, a set, an object from a
    Python caller) would be saved into every checkpoint, which ``weights_only`` loading refuses."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{dotted}.{key}" if dotted else str(key)
            if not isinstance(key, PLAIN_TYPES):
                raise ConfigError(f"`{name}`: a key must be text or a number", where(value, key) or loc)
            refuse_objects(item, name, where(value, key) or loc)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            refuse_objects(item, f"{dotted}.{index}", where(value, index) or loc)
    elif not isinstance(value, PLAIN_TYPES):
        raise ConfigError(f"`{dotted}` holds a {type(value).__name__} value", loc,
                          "a config holds mappings, lists, text, numbers, booleans and null only")


def load_config(source: str | Path | dict, overrides: Iterable[str] = (), origin: str = "<dict>") -> Config:
    """Load a full config or a model-only file, resolve ``model: path``, apply ``--set``. A mapping's
    errors are located at ``origin`` (``the config in runs/x/checkpoints/last.pt``)."""
    if isinstance(source, dict):
        root, path = _located(source, origin), None
    else:
        path = Path(source)
        root = read_yaml(path)
    if root is None:
        root = LocatedDict(loc=Location(str(path or origin), 1, 1))
    if not isinstance(root, dict):
        raise ConfigError("a config must be a mapping with `model:` (and optionally `data:`, `train:`)",
                          where(root) or Location(str(path)))
    if "model" not in root and ("layers" in root or "input" in root):
        root = LocatedDict({"model": root}, loc=root.loc)  # a model-only file
        root.value_locs["model"] = root.loc
    model = root.get("model")
    if isinstance(model, str):
        base = path.parent if path else Path.cwd()
        model_path = base / model
        if not model_path.is_file():
            raise ConfigError(f"model file `{model}` not found (looked for {model_path})",
                              root.where("model"), "the path is relative to the config file's folder")
        model = read_yaml(model_path)
        if isinstance(model, dict) and "model" in model:
            model = model["model"]
        root["model"] = model
    for override in overrides:
        apply_override(root, override)
    for key in root:
        if key not in SECTIONS:
            raise ConfigError(f"unknown section `{key}`", root.where(key, of_key=True),
                              choices_hint(key, SECTIONS, "sections"))
    if "model" not in root:
        raise ConfigError("the config has no `model:` section", root.loc,
                          "add `model:` with `input:` and `layers:`, or point it at a model file")
    refuse_objects(root, "", root.loc)
    model = root["model"]
    sections = {}
    for name in SECTIONS:
        value = model if name == "model" else root.get(name)
        if value is None:
            value = LocatedDict(loc=root.where(name) if name in root else root.loc)
        if not isinstance(value, dict):
            raise ConfigError(f"`{name}:` must be a mapping", root.where(name))
        sections[name] = value
    return Config(path=path, **sections)


def _located(value: Any, label: str) -> Any:
    """Wrap plain dicts/lists (from Python callers or --set) in Located containers."""
    loc = Location(label)
    if isinstance(value, dict) and not isinstance(value, LocatedDict):
        out = LocatedDict({k: _located(v, label) for k, v in value.items()}, loc=loc)
        out.value_locs = {k: where(v) or loc for k, v in out.items()}
        out.key_locs = dict.fromkeys(out, loc)
        return out
    if isinstance(value, (list, tuple)) and not isinstance(value, LocatedList):
        out = LocatedList([_located(v, label) for v in value], loc=loc)
        out.item_locs = [loc] * len(out)
        return out
    if isinstance(value, PurePath):  # a Python caller's path is the text of that path
        return str(value)
    return value


def apply_override(root: LocatedDict, override: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to the loaded config."""
    label = f"--set {override}"
    loc = Location(label)
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"`{override}` is not of the form dotted.key=value", loc,
                          "for example --set train.optimizer.lr=0.05")
    parts = key.strip().split(".")
    value = _located(parse_yaml(raw, label), label) if raw.strip() else ""
    node: Any = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"`{'.'.join(parts[:depth + 1])}`: index {part} is out of range "
                                  f"(the list has {len(node)} items)", loc)
            index = int(part)
            if last:
                node[index] = value
                if isinstance(node, LocatedList):
                    node.item_locs[index] = loc
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                if isinstance(node, LocatedDict):
                    node.value_locs[part] = loc
                    node.key_locs.setdefault(part, loc)
                return
            if part not in node or node[part] is None:
                node[part] = LocatedDict(loc=loc)
                if isinstance(node, LocatedDict):
                    node.value_locs[part] = loc
            node = node[part]
        else:
            raise ConfigError(f"`{'.'.join(parts[:depth])}` is a single value, not a mapping or list", loc)
