"""`skiptrain schema` in the real editor: yaml-language-server (npm, 1.25) over stdio, as VS Code,
Neovim or Helix run it. Diagnostics on the right lines, completion and hover contents.

Skips where Node or the server is missing (CI's `.ci/run` installs it into `.ci/.node`; or point
SKIPTRAIN_YAML_LS at the server's executable).
"""
from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from skiptrain.schema import schema_text
from skiptrain.schema_blocks import read_blocks

from .conftest import CONFIGS, EXAMPLES
from .lsp import LanguageServer, find_server

COMMAND = find_server()
pytestmark = pytest.mark.skipif(COMMAND is None, reason="yaml-language-server or node not found (on PATH, in "
                                ".ci/.node/node_modules/.bin/, or SKIPTRAIN_YAML_LS): `.ci/run` installs it")
TEMPLATES = sorted(Path(__file__).resolve().parents[1].glob("skiptrain/templates/*.yaml"))
ZOO = sorted(Path(__file__).resolve().parents[1].glob("skiptrain/zoo/*.yaml"))  # configs/zoo is a link rglob skips
_names = itertools.count()

BLOCKS = """\
model:
  input: [3, 8, 8]
  blocks:
    basic:
      args: {channels: 16, stride: 1}
      layers:
        - {type: conv2d, out_channels: "${channels}", kernel_size: 3, stride: "${stride}"}
        - {type: conv2d, out_channels: "${chanels}", kernel_size: 3}
  layers:
    - {block: basic, args: {channels: 32}}
    - {block: basic, args: {chanels: 64}}
    - {block: basci}
"""


class Editor:
    """The server, a folder with the schemas, and one document name per check."""

    def __init__(self, server: LanguageServer, folder: Path) -> None:
        self.server, self.folder = server, folder
        (folder / "skiptrain.schema.json").write_text(schema_text())

    def schema_for(self, text: str) -> str:
        """A per-config schema (`skiptrain schema CONFIG`) for this text; its file name."""
        name = f"c{next(_names)}"
        config = self.folder / f"{name}.yaml"
        config.write_text(text)
        schema = self.folder / f"{name}.schema.json"
        schema.write_text(schema_text(config))
        return schema.name

    def document(self, text: str, schema: str) -> tuple[Path, str]:
        """A new document: the schema header on line 0, then the text (its line i is the document's i + 1)."""
        return self.folder / f"d{next(_names)}.yaml", f"# yaml-language-server: $schema=./{schema}\n{text}"

    def diagnose(self, text: str, schema: str = "skiptrain.schema.json") -> list[tuple[int, str]]:
        """(line in `text`, message) of each diagnostic."""
        path, full = self.document(text, schema)
        return [(d["range"]["start"]["line"] - 1, d["message"]) for d in self.server.diagnose(path, full)]

    def complete(self, text: str, line: int, character: int, schema: str = "skiptrain.schema.json") -> list[str]:
        """Labels offered at (line, character) of `text`."""
        path, full = self.document(text, schema)
        uri = self.server.open(path, full)
        return [item["label"] for item in self.server.completion(uri, line + 1, character)]

    def hover(self, text: str, line: int, character: int, schema: str = "skiptrain.schema.json") -> str:
        path, full = self.document(text, schema)
        uri = self.server.open(path, full)
        return self.server.hover(uri, line + 1, character)


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("editor")
    server = LanguageServer(COMMAND, folder)
    try:
        yield Editor(server, folder)
    finally:
        server.close()


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if fragment in line)


# -- no false errors -------------------------------------------------------------------------------
def test_shipped_configs_have_no_diagnostics(editor):
    """Every shipped config (configs/, the zoo, the shared examples, the templates), with the generic schema and,
    where it has blocks, with its own (`skiptrain schema CONFIG`). All are opened at once: the server
    waits 200 ms before it validates a document, and those waits overlap."""
    paths = CONFIGS + ZOO + EXAMPLES + TEMPLATES
    assert len(CONFIGS) >= 21 and len(ZOO) >= 16 and TEMPLATES
    checks = []
    for path in paths:
        text = path.read_text()
        checks.append((path, text, "skiptrain.schema.json"))
        blocks = read_blocks(path)
        if blocks:  # configs whose blocks take the same arguments share one schema (the server loads it once)
            own = editor.folder / f"own-{hashlib.sha1(repr(blocks).encode()).hexdigest()[:12]}.schema.json"
            if not own.exists():
                own.write_text(schema_text(path))
            checks.append((path, text, own.name))
    found = editor.server.diagnose_all([editor.document(text, schema) for _, text, schema in checks])
    wrong = {f"{path.relative_to(path.parents[1])} ({schema})": [d["message"] for d in diagnostics]
             for (path, _, schema), diagnostics in zip(checks, found) if diagnostics}
    assert wrong == {}
    assert sum(schema != "skiptrain.schema.json" for _, _, schema in checks) >= 20  # most have blocks


# -- mistakes underlined on their lines ------------------------------------------------------------
def test_block_arguments_and_references_are_checked_with_the_configs_own_schema(editor):
    """(a) `args: {chanels: 64}`, (b) `${chanels}`, and an unknown block name, each on its line."""
    found = editor.diagnose(BLOCKS, editor.schema_for(BLOCKS))
    assert sorted(line for line, _ in found) == [line_of(BLOCKS, '"${chanels}"'), line_of(BLOCKS, "{chanels: 64}"),
                                                 line_of(BLOCKS, "basci")]
    messages = dict(found)
    assert "`channels`, `stride`" in messages[line_of(BLOCKS, "{chanels: 64}")]
    assert "block `basic`" in messages[line_of(BLOCKS, '"${chanels}"')]
    assert '"basic"' in messages[line_of(BLOCKS, "basci")]
    shown = editor.hover(BLOCKS, line_of(BLOCKS, "{channels: 32}"), 14, editor.schema_for(BLOCKS))
    assert "a block defined in" in shown and "||" not in shown  # one description, not the alternatives joined


def test_a_misspelled_section_is_one_error_on_its_line(editor):
    """(c) `modle:` is not read as a model-only file (which made five errors)."""
    text = "modle:\n  input: [3]\n  layers: [{type: relu}]\ntrain: {epochs: 1}\n"
    assert editor.diagnose(text) == [(0, "Property modle is not allowed.")]
    assert [line for line, _ in editor.diagnose("data: {dataset: digits}\n")] == [0]  # no `model:`
    model_only = "input: [3]\nlayerz: []\n"
    assert [line for line, _ in editor.diagnose(model_only)] == [0, 1]  # `layers` missing; `layerz` unknown


def test_an_empty_file_is_offered_the_sections(editor):
    """(c) not the model's keys."""
    assert sorted(editor.complete("", 0, 0)) == ["data", "model", "train"]
    assert "layers" in editor.complete("input: [3]\n", 1, 0)  # a model-only file: the model's keys


MISTAKES = """\
model:
  input: [3, 8, 8]
  projection: padd
  layers:
    - {type: conv2d, out_channels: 8, kernal_size: 3}
    - {type: conv2d, out_channels: 8, kernel_size: three}
    - {type: conv2dd, out_channels: 8}
    - {type: linear, out_channels: 4}
    - {type: relu, id: a, inplace: 3}
  skips:
    - {from: a, too: input}
data: {dataset: digits, batchsize: 3}
"""


def test_mistakes_are_underlined_on_their_lines(editor):
    """Misspelled keys, wrong value kinds, a misspelled type and wrong argument names: one diagnostic each,
    on the right line; the misspelled type gets a short did-you-mean, not a list of 300 names (f)."""
    found = editor.diagnose(MISTAKES)
    lines = MISTAKES.splitlines()
    assert sorted({line for line, _ in found}) == [2, 4, 5, 6, 7, 8, 10, 11], [(lines[n], m) for n, m in found]
    messages = {}
    for line, message in found:
        messages.setdefault(line, []).append(message)
    assert messages[6] == ["unknown layer type: did you mean `conv2d`?"]  # not the arguments too
    assert "Property kernal_size is not allowed." in messages[4]  # and `kernel_size` missing
    assert "Property out_channels is not allowed." in messages[7]
    assert messages[5] == ['Incorrect type. Expected "integer | array".']
    assert messages[11] == ["Property batchsize is not allowed."]
    assert all(len(message) < 200 for _, message in found)


def test_an_unknown_type_far_from_every_name_points_to_the_list(editor):
    found = editor.diagnose("input: [3]\nlayers:\n  - {type: zzzzzz, size: 3}\n")
    assert [(line, m[:18]) for line, m in found] == [(2, "unknown layer type")]
    assert len(found[0][1]) < 200


# -- completion and hover --------------------------------------------------------------------------
def test_completion_offers_a_types_own_arguments(editor):
    text = "input: [3]\nlayers:\n  - type: conv2d\n    k\n"
    labels = editor.complete(text, 3, 5)
    assert {"kernel_size", "out_channels", "stride", "padding"} <= set(labels)
    assert "out_features" not in labels and "num_features" not in labels
    assert "conv2d layer" in labels  # (g) the snippet of its required arguments, named by what it inserts
    assert "skiptrain config" not in labels


def test_a_new_layers_entry_is_offered_type_and_block(editor):
    """(d) an empty `- ` in `layers:` offers `block:` beside `type:`, and nothing from every type's arguments."""
    text = "model:\n  input: [3]\n  layers:\n    - type: relu\n    - \n"
    labels = editor.complete(text, 4, 6)
    assert {"type", "block"} <= set(labels)
    assert "out_channels" not in labels and "skiptrain config" not in labels
    text = "model:\n  input: [3]\n  layers:\n    - block: basic\n      \n"
    labels = editor.complete(text, 4, 6)
    assert {"args", "repeat"} <= set(labels)


def test_completion_of_a_block_instance_offers_the_blocks_arguments(editor):
    text = BLOCKS.replace("{chanels: 64}", "{}") + "    - block: basic\n      args:\n        \n"
    labels = editor.complete(text, len(text.splitlines()) - 1, 8, editor.schema_for(text))
    assert {"channels", "stride"} <= set(labels)


def test_type_values_are_completed_with_descriptions(editor):
    labels = editor.complete("input: [3]\nlayers:\n  - type: con\n", 2, 13)
    assert {"conv2d", "conv1d", "concat"} <= set(labels)


def test_hovering_a_type_shows_that_types_description(editor):
    """(e) conv2d's own description, not every type's joined (14 KB)."""
    text = "input: [3]\nlayers:\n  - type: conv2d\n    out_channels: 3\n"
    shown = editor.hover(text, 2, 12)
    assert "2D convolution" in shown and "linear" not in shown.lower()
    assert len(shown) < 600
    argument = editor.hover(text, 3, 6)
    assert len(argument) < 600 and "conv2d" in argument


def test_args_of_the_wrong_kind_are_not_called_unknown_arguments(editor):
    text = BLOCKS.replace("{chanels: 64}", "3")
    found = editor.diagnose(text, editor.schema_for(text))
    assert (line_of(text, "args: 3"), 'Incorrect type. Expected "arguments of block basic".') in found
