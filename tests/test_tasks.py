"""The task library: MMEB-V1, generic tasks, M-BEIR loader, registry, precedence."""
import csv
import dataclasses
from pathlib import Path

import pytest

from mmsearch import tasks as T
from mmsearch.errors import InputError, UnknownTaskError

PACKAGED_TSV = Path(T.__file__).parent / "data" / "mmeb_v1_tasks.tsv"
REFERENCE_TSV = Path("/work/shared/reference/mmeb_v1_tasks.tsv")
GENERIC = {"t2i", "i2t", "i2i", "t2t", "composed", "vqa", "doc"}


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registering in a test leaks nowhere."""
    monkeypatch.setattr(T, "_REGISTRY", dict(T._registry()))


def mmeb_rows():
    """The packaged table parsed with csv, independently of mmsearch.tasks."""
    with open(PACKAGED_TSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ------------------------------------------------------------------ MMEB


def test_packaged_table_is_the_reference():
    if not REFERENCE_TSV.exists():
        pytest.skip("shared reference table not available")
    assert PACKAGED_TSV.read_bytes() == REFERENCE_TSV.read_bytes()


def test_all_36_mmeb_datasets_with_exact_instructions():
    rows = mmeb_rows()
    assert len(rows) == 36 and len({r["dataset"] for r in rows}) == 36
    for row in rows:
        task = T.get_task(row["dataset"])
        assert task.query_instruction == row["query_instruction"]  # byte-exact
        assert task.query_modality == row["query_modality"]
        assert task.candidate_modality == row["target_modality"]
        assert task.meta_task == row["meta_task"] and task.source == T.MMEB
    assert [t.name for t in T.list_tasks(T.MMEB)] == [r["dataset"] for r in rows]


def test_trailing_spaces_and_colons_are_kept():
    assert T.get_task("N24News").query_instruction.endswith("domain classification: ")
    t2i = "Find me an everyday image that matches the given caption: "
    assert T.get_task("MSCOCO_t2i").query_instruction == t2i
    assert T.get_task("VisualNews_t2i").query_instruction == "Retrieve an image of this news caption."
    assert T.get_task("MSCOCO").query_instruction.endswith("labeled as ")


def test_mmeb_candidate_instructions_follow_vlm2vec_conventions():
    for task in T.list_tasks(T.MMEB):
        if task.candidate_modality == "text":
            assert task.candidate_instruction == "", task.name  # raw text targets
        else:
            assert task.candidate_instruction, task.name
    for name in ("CIRR", "NIGHTS", "MSCOCO_t2i", "VisualNews_t2i", "VisDial", "FashionIQ"):
        assert T.get_task(name).candidate_instruction == "Represent the given image."
    wiki = "Represent the given Wikipedia image with related text information: "
    assert T.get_task("WebQA").candidate_instruction == T.get_task("OVEN").candidate_instruction == wiki
    assert T.get_task("RefCOCO").candidate_instruction == "Represent the given cropped image of the object"


def test_lookup_is_case_insensitive_when_unique():
    assert T.get_task("cirr") is T.get_task("CIRR")
    assert T.get_task(" imagenet-1k ").name == "ImageNet-1K"
    task = T.get_task("t2i")
    assert T.get_task(task) is task


# --------------------------------------------------------------- generic


def test_generic_tasks():
    generic = {t.name: t for t in T.list_tasks(T.GENERIC)}
    assert set(generic) == GENERIC
    modalities = {name: (t.query_modality, t.candidate_modality) for name, t in generic.items()}
    assert modalities == {
        "t2i": ("text", "image"), "i2t": ("image", "text"), "i2i": ("image", "image"),
        "t2t": ("text", "text"), "composed": ("image,text", "image"),
        "vqa": ("image,text", "text"), "doc": ("text", "page"),
    }
    assert generic["doc"].candidate_instruction == "Understand the content of the provided document image."
    assert generic["t2i"].candidate_instruction == "Represent the given image."
    assert generic["composed"].query_instruction.startswith("Given an image, find a similar everyday image")
    for task in generic.values():
        assert task.query_instruction and task.query_instruction == task.query_instruction.strip()
        assert task.description
        if task.candidate_modality == "text":
            assert task.candidate_instruction == ""


# -------------------------------------------------------------- registry


def test_unknown_task_error_suggests_close_matches():
    with pytest.raises(UnknownTaskError) as err:
        T.get_task("MSCOCO_t2")
    msg = str(err.value)
    assert "'MSCOCO_t2'" in msg and "'MSCOCO_t2i'" in msg and "mmsearch tasks" in msg
    assert isinstance(err.value, KeyError) and not msg.startswith('"')
    with pytest.raises(UnknownTaskError, match="mmsearch tasks"):
        T.get_task("completely-unrelated-zzz")


def test_get_task_rejects_non_strings():
    with pytest.raises(InputError, match="expected a task name"):
        T.get_task(3)


def test_list_tasks_sources():
    everything = T.list_tasks()
    assert len(everything) >= 36 + len(GENERIC)
    assert {t.source for t in T.list_tasks(T.GENERIC)} == {T.GENERIC}
    with pytest.raises(InputError, match="mmeb"):
        T.list_tasks("nope")


def make_task(name="my-task", **kw):
    fields = dict(query_instruction="Find it:", candidate_instruction="", query_modality="text",
                  candidate_modality="text", description="test task")
    fields.update(kw)
    return T.Task(name=name, **fields)


def test_register_task(registry):
    task = T.register_task(make_task())
    assert T.get_task("my-task") is task and task.source == T.CUSTOM
    assert task in T.list_tasks(T.CUSTOM)
    T.register_task(make_task())  # identical: fine
    with pytest.raises(InputError, match="already registered"):
        T.register_task(make_task(query_instruction="Other:"))
    T.register_task(make_task(query_instruction="Other:"), overwrite=True)
    assert T.get_task("my-task").query_instruction == "Other:"
    with pytest.raises(InputError, match="already registered"):
        T.register_task(make_task("CIRR"))
    with pytest.raises(InputError, match="Task"):
        T.register_task({"name": "x"})


def test_task_validation_and_immutability():
    with pytest.raises(InputError, match="query_modality='video'"):
        make_task(query_modality="video")
    with pytest.raises(InputError, match="non-empty"):
        make_task("")
    task = make_task(prompts=["a", "b"])
    assert task.prompts == ("a", "b") and task.to_dict()["prompts"] == ["a", "b"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "x"


# --------------------------------------------------- resolve_instruction


def test_resolve_instruction_precedence():
    cirr = T.get_task("CIRR")
    assert T.resolve_instruction("CIRR", "my own", side="query") == "my own"
    assert T.resolve_instruction("CIRR", "", side="query") == ""  # explicit empty wins too
    assert T.resolve_instruction("CIRR") == cirr.query_instruction
    assert T.resolve_instruction(cirr, side="candidate") == "Represent the given image."
    assert T.resolve_instruction(task="vqa", side="candidate") == ""
    assert T.resolve_instruction() == ""
    assert T.resolve_instruction(instruction="x", side="candidate") == "x"


def test_resolve_instruction_errors():
    with pytest.raises(InputError, match="side='target'"):
        T.resolve_instruction("CIRR", side="target")
    with pytest.raises(UnknownTaskError):
        T.resolve_instruction("no-such-task")
    with pytest.raises(InputError, match="instruction must be a str"):
        T.resolve_instruction(instruction=5)


# ----------------------------------------------------------------- M-BEIR

MBEIR_HEADER = "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4"
MBEIR_ROWS = [
    "text\timage\tVisualNews\t0\tIdentify the news image for this caption.\tShow a news photo of:"
    "\tFind the image of this news story.\tRetrieve the matching news picture.",
    "image,text\timage\tCIRR\t8\tChange the image as described. \tEdit this photo:\tFind the edited image.\t",
    "image,text\timage,text\tOVEN\t5\tFind the Wikipedia entry of this image.\tWhich entity is this?\t\t",
]


def write_tsv(tmp_path, lines, newline="\n"):
    path = tmp_path / "query_instructions.tsv"
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def test_mbeir_loader_exact_layout(tmp_path):
    tasks = T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, *MBEIR_ROWS]))
    assert set(tasks) == {
        "mbeir:VisualNews:text->image", "mbeir:CIRR:image,text->image", "mbeir:OVEN:image,text->image,text",
    }
    news = tasks["mbeir:VisualNews:text->image"]
    assert news.prompts == (
        "Identify the news image for this caption.", "Show a news photo of:",
        "Find the image of this news story.", "Retrieve the matching news picture.",
    )
    assert news.query_instruction == news.prompts[0]
    assert (news.dataset_id, news.source) == ("0", "mbeir")
    assert (news.query_modality, news.candidate_modality) == ("text", "image")
    assert news.candidate_instruction == "Represent the given image."
    cirr = tasks["mbeir:CIRR:image,text->image"]
    assert cirr.prompts == ("Change the image as described.", "Edit this photo:", "Find the edited image.")
    oven = tasks["mbeir:OVEN:image,text->image,text"]
    assert len(oven.prompts) == 2 and oven.candidate_instruction
    assert T.mbeir_task_name("CIRR", "image,text", "image") in tasks


def test_mbeir_loader_header_variants_crlf_and_headerless(tmp_path):
    expected = T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, *MBEIR_ROWS]))
    variant = "\t".join(["Query Modality", "Candidate Modality", "Dataset", "Dataset_id"]
                        + [f"Prompt {i}" for i in range(1, 5)])
    assert T.load_mbeir_instructions(write_tsv(tmp_path, [variant, *MBEIR_ROWS], "\r\n")) == expected
    assert T.load_mbeir_instructions(write_tsv(tmp_path, MBEIR_ROWS)) == expected
    reordered = "dataset\tdataset_id\tquery_modality\tcand_modality\tprompt_1"
    row = "WebQA\t2\ttext\ttext\tRetrieve passages that answer the question."
    task = T.load_mbeir_instructions(write_tsv(tmp_path, [reordered, row]))["mbeir:WebQA:text->text"]
    assert task.prompts == ("Retrieve passages that answer the question.",) and task.dataset_id == "2"


def test_mbeir_loader_register(tmp_path, registry):
    T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, *MBEIR_ROWS]), register=True)
    assert T.get_task("mbeir:CIRR:image,text->image").dataset_id == "8"
    assert len(T.list_tasks(T.MBEIR)) == 3


def test_mbeir_loader_errors(tmp_path):
    with pytest.raises(InputError, match="not found.*query_instructions.tsv"):
        T.load_mbeir_instructions(tmp_path / "missing.tsv")
    bad_modality = "video\timage\tX\t1\tprompt"
    with pytest.raises(InputError, match=r"query_instructions.tsv:2: modality 'video'"):
        T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, bad_modality]))
    with pytest.raises(InputError, match="at least one prompt"):
        T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, "text\timage\tX\t1\t\t"]))
    with pytest.raises(InputError, match="header"):
        T.load_mbeir_instructions(write_tsv(tmp_path, ["qm\tcm\tds\tid\tp1", MBEIR_ROWS[0]]))
    clash = MBEIR_ROWS[0].replace("Identify", "Spot")
    with pytest.raises(InputError, match="second, different row"):
        T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER, MBEIR_ROWS[0], clash]))
    with pytest.raises(InputError, match="no instruction rows"):
        T.load_mbeir_instructions(write_tsv(tmp_path, [MBEIR_HEADER]))
