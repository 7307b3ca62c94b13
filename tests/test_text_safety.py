"""Odd values where text is shown (issue 15): a model, layer-type, class or file name is printed as
written, never read as rich markup; `graph --format dot` / `mermaid` quote it; a model name cannot
place a run outside `out_dir`; every unsupported `--device` is one message with a hint, exit 1."""
from __future__ import annotations

import re

import pytest

from skiptrain.training.setup import select_device
from skiptrain.errors import SkiptrainError

from .conftest import TINY_RESIDUAL, TINY_RESIDUAL_MODEL, invoke


def write(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def named(name: str, text: str = TINY_RESIDUAL_MODEL) -> str:
    return text.replace("name: tiny", f"name: '{name}'")


@pytest.mark.parametrize("name", ["[bold]m", "[red]x[bold]", "a[b]c"])
def test_validate_prints_a_model_name_literally(tmp_path, name):
    result = invoke("validate", write(tmp_path, named(name)))
    assert result.exit_code == 0, result.output
    assert f"{name}: input [1, 8, 8]" in result.output


def test_a_closing_tag_in_a_model_name_is_refused_literally(tmp_path):
    """`q[/]` once crashed rich; a `/` is refused (a run directory's name), and the message shows it as written."""
    result = invoke("validate", write(tmp_path, named("q[/]")))
    assert result.exit_code == 1
    assert "`name: q[/]` is a path" in result.output


def test_a_file_name_with_markup_is_printed_literally(tmp_path):
    path = write(tmp_path, TINY_RESIDUAL_MODEL, "[bold]c.yaml")
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "[bold]c.yaml: valid" in result.output
    bad = write(tmp_path, TINY_RESIDUAL_MODEL.replace("type: relu}", "type: '[bold]relu'}", 1), "[bold]d.yaml")
    result = invoke("validate", bad)
    assert result.exit_code == 1
    assert "[bold]d.yaml:" in result.output and "`[bold]relu`" in result.output


def test_predict_prints_file_and_class_names_literally(tmp_path):
    np = pytest.importorskip("numpy")
    config = write(tmp_path, TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    run = tmp_path / "run"
    assert invoke("train", config, "--run-dir", run).exit_code == 0
    sample = tmp_path / "[bold]x.npy"
    np.save(sample, np.zeros((1, 8, 8), dtype="float32"))
    result = invoke("predict", run, sample, "--top", "1")
    assert result.exit_code == 0, result.output
    assert "[bold]x.npy" in result.output


def test_class_names_in_tables_are_printed_literally():
    from io import StringIO

    from rich.console import Console

    from skiptrain.report import literal_row

    console = Console(file=StringIO(), width=200)
    from rich.table import Table

    table = Table("class", "value")
    table.add_row(*literal_row(["[bold]cat[/bold]", "q[/]"]))
    console.print(table)
    assert "[bold]cat[/bold]" in console.file.getvalue() and "q[/]" in console.file.getvalue()


def dot_tokens(text: str) -> list[str]:
    """A small DOT tokenizer: quoted strings (with backslash escapes), ids, punctuation."""
    tokens, i = [], 0
    pattern = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|[A-Za-z_0-9.]+|->|[{}\[\];,=]')
    while i < len(text):
        match = pattern.match(text, i)
        assert match, f"not DOT at {text[i:i + 40]!r}"
        if not match.group().isspace():
            tokens.append(match.group())
        i = match.end()
    return tokens


@pytest.mark.parametrize("name", ['a" ; evil [label="x', 'end"', '"'])
def test_graph_dot_quotes_a_model_name(tmp_path, name):
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'  # a YAML double-quoted scalar
    config = write(tmp_path, TINY_RESIDUAL_MODEL.replace("name: tiny", "name: " + quoted))
    out = tmp_path / "g.dot"
    result = invoke("graph", config, "--format", "dot", "-o", out)
    assert result.exit_code == 0, result.output
    tokens = dot_tokens(out.read_text())
    assert tokens[:3] == ["digraph", tokens[1], "{"] and tokens[-1] == "}"
    assert tokens[1][1:-1].replace('\\"', '"').replace("\\\\", "\\") == name
    assert "evil" not in [t for t in tokens if not t.startswith('"')]
    assert tokens.count("{") == 1 and tokens.count("}") == 1


def test_graph_labels_escape_quotes_and_backslashes():
    from skiptrain.report import _dot_text, _mermaid_text

    assert '"' not in _mermaid_text('a"b')
    assert dot_tokens(f'"{_dot_text("trailing backslash" + chr(92))}"') == ['"trailing backslash' + 2 * chr(92) + '"']
    assert len(dot_tokens(f'"{_dot_text(chr(92) + chr(34) + "; x")}"')) == 1


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", ".."])
def test_a_model_name_cannot_leave_out_dir(tmp_path, name):
    result = invoke("validate", write(tmp_path, named(name)))
    assert result.exit_code == 1
    assert "m.yaml:3:" in result.output and "name" in result.output and "hint:" in result.output


def test_train_refuses_a_path_as_model_name(tmp_path):
    config = write(tmp_path, TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    result = invoke("train", config, "--set", "model.name=../../escaped", "--set", f"train.out_dir={tmp_path / 'runs'}")
    assert result.exit_code == 1, result.output
    assert not (tmp_path.parent / "escaped").exists() and not list(tmp_path.parent.glob("escaped-*"))


@pytest.mark.parametrize("device", ["meta", "xla", "cuda:x", "cuda:-1", "ipu", "cpu:0"])
def test_unsupported_devices_are_one_message(tmp_path, device):
    with pytest.raises(SkiptrainError) as info:
        select_device(device)
    assert info.value.hint
    result = invoke("train", write(tmp_path, TINY_RESIDUAL), "--device", device, "--run-dir", tmp_path / "r")
    assert result.exit_code == 1, result.output
    assert f"device `{device}`" in result.output and "Traceback" not in result.output


def test_settings_and_select_device_agree():
    from skiptrain.settings import DEVICE_PATTERN

    for device in ["auto", "cpu", "cuda", "cuda:1", "mps", "meta", "xla", "cuda:x", "cpu:0"]:
        accepted = re.fullmatch(DEVICE_PATTERN, device) is not None
        try:
            select_device(device)
            selected = True
        except SkiptrainError as exc:
            selected = "GPU" in str(exc) or "not available" in str(exc) or "does not exist" in str(exc)
        assert accepted == selected, device


@pytest.mark.parametrize("command", ["gradflow", "eval"])
def test_other_commands_check_the_device_in_the_same_place(tmp_path, command):
    source = write(tmp_path, TINY_RESIDUAL)
    if command == "eval":
        source = tmp_path / "run"
        assert invoke("train", write(tmp_path, TINY_RESIDUAL.replace("epochs: 2", "epochs: 1")),
                      "--run-dir", source).exit_code == 0
    result = invoke(command, source, "--device", "meta")
    assert result.exit_code == 1, result.output
    assert "unknown device `meta`" in result.output and "hint: use auto, cpu" in result.output
