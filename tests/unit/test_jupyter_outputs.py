"""Output shaping and limits (spec 6.2/6.3) on synthetic kernel messages: no kernels."""

from __future__ import annotations

from projecthub.project.jupyter.outputs import Limits, OutputCollector, shape_content, truncation_notice
from projecthub.project.jupyter.specs import SpecCatalog
from projecthub.project.jupyter.stateless import chdir_code


def msg(msg_type: str, **content: object) -> dict:
    return {"msg_type": msg_type, "content": content}


def test_stripping_and_empty_dicts() -> None:
    assert shape_content(msg("status", execution_state="busy")) is None
    assert shape_content(msg("execute_input", code="1", execution_count=1)) is None
    assert shape_content(msg("execute_reply", status="ok", execution_count=3,
                             user_expressions={}, payload=[])) is None
    assert shape_content(msg("execute_result", data={"text/plain": "2"}, metadata={},
                             execution_count=1)) == {"data": {"text/plain": "2"}}
    assert shape_content(msg("display_data", data={"image/png": "AAA"}, metadata={"w": 1},
                             transient={})) == {"data": {"image/png": "AAA"}, "metadata": {"w": 1}}
    assert shape_content(msg("display_data", data={"a": "b"}, metadata={},
                             transient={"display_id": "x"})) == {"data": {"a": "b"},
                                                                 "transient": {"display_id": "x"}}
    # empty arrays are kept
    assert shape_content(msg("error", ename="E", evalue="", traceback=[])) == {
        "ename": "E", "evalue": "", "traceback": []}


def test_comm_messages_dropped() -> None:
    c = OutputCollector()
    c.add_message(msg("comm_open", comm_id="abc", data={"x": 1}, target_name="t"))
    c.add_message(msg("comm_msg", comm_id="abc", data={"x": 1}))
    assert c.items == []


def test_streams_not_merged_and_clear_output() -> None:
    c = OutputCollector()
    c.add_message(msg("stream", name="stdout", text="1"))
    c.add_message(msg("stream", name="stdout", text="2\n"))
    assert c.items == [{"name": "stdout", "text": "1"}, {"name": "stdout", "text": "2\n"}]
    c.add_message(msg("clear_output", wait=True))
    assert c.items == [{"wait": True}]
    c.add_message(msg("clear_output", wait=False))
    assert c.items == [{"wait": False}]


def test_cell_limit_notice_exact_and_repeats() -> None:
    c = OutputCollector(Limits(max_output_per_cell=50))
    c.add_message(msg("stream", name="stdout", text="hi\n"))
    c.add_message(msg("stream", name="stdout", text="x" * 100 + "\n"))
    c.add_message(msg("stream", name="stdout", text="y"))
    c.add_message(msg("error", ename="E", evalue="v", traceback=["t"]))
    notice = {"name": "stdout", "output_type": "stream",
              "text": ["Output truncated since it exceeded the cell output limit of 50 characters"]}
    assert truncation_notice("cell", 50) == notice
    assert c.items == [{"name": "stdout", "text": "hi\n"}, notice, notice,
                       {"ename": "E", "evalue": "v", "traceback": ["t"]}]


def test_notice_once_when_asked() -> None:
    c = OutputCollector(Limits(max_output_per_cell=40), repeat_notice=False)
    for text in ("a", "b" * 20, "c", "d"):
        c.add_message(msg("stream", name="stdout", text=text))
    c.add_message(msg("error", ename="E", evalue="v", traceback=[]))
    assert c.items == [{"name": "stdout", "text": "a"}, truncation_notice("cell", 40),
                       {"ename": "E", "evalue": "v", "traceback": []}]


def test_global_limit_notice() -> None:
    c = OutputCollector(Limits(max_output_per_cell=None, max_output=40))
    c.add_message(msg("stream", name="stdout", text="a"))
    c.add_message(msg("stream", name="stdout", text="b" * 40))
    assert c.items[1]["text"] == [
        "Output truncated since it exceeded the global output limit of 40 characters"]


def test_limits_defaults() -> None:
    lim = Limits.from_opts(None)
    assert (lim.timeout_ms_per_cell, lim.max_output_per_cell, lim.max_output) == (30000, 1000000, 5000000)
    lim = Limits.from_opts({"timeout_ms_per_cell": 500, "max_output_per_cell": 10})
    assert (lim.timeout_ms_per_cell, lim.max_output_per_cell, lim.max_output) == (500, 10, 5000000)


def test_chdir_table() -> None:
    assert "chdir('/x')" in (chdir_code("python", "/x") or "")
    assert chdir_code("sparql", "/x") == ""
    assert chdir_code("cobol", "/x") is None
    assert (chdir_code("R", "/x") or "").startswith("try(setwd(")


def test_spec_catalog_format() -> None:
    specs = SpecCatalog().api_list()
    assert specs == sorted(specs, key=lambda s: s["display_name"])
    py = next(s for s in specs if s["name"] == "python3")
    assert py["language"] == "python"
    assert isinstance(py["argv"], list) and "{connection_file}" in py["argv"]
    assert py["display_name"] and py["resource_dir"]
    assert py["env"] == {}
    assert set(py) <= {"name", "display_name", "language", "interrupt_mode", "env", "metadata",
                       "resource_dir", "argv"}
