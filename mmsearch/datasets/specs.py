"""The synthetic tasks: their M-BEIR dataset, dataset id and task id, their MMEB name,
and their instructions.

M-BEIR's task ids (UniIR ``MBEIR_TASK``): 0 text->image, 1 text->text, 2 text->image,text,
3 image->text, 4 image->image, 6 image,text->text, 7 image,text->image, 8 image,text->image,text.
Its dataset ids 0-9 are the real datasets; the synthetic ones take 10-13, so their
qids/dids ("10:17") never collide with real ones in a union pool.

Every instruction is one sentence ending in a full stop and is the same in every
format: M-BEIR's first prompt, the MMEB query prefix and the MMEB-train query prefix,
so a model trained on one layout sees the same strings when evaluated on another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

IMAGE_TOKEN = "<|image_1|>"  # MMEB's (Phi-3-V) image placeholder; trainers swap in their backbone's
IMAGE_CANDIDATE = "Represent the given image."
PAGE_CANDIDATE = "Understand the content of the provided document image."


@dataclass(frozen=True)
class TaskSpec:
    name: str               # t2i, i2t, composed, vqa, doc
    dataset: str            # M-BEIR dataset name (the instructions TSV's ``dataset``)
    dataset_id: int
    task_id: int
    query_modality: str
    cand_modality: str
    mmeb_name: str          # MMEB dataset (table folder) name
    meta_task: str          # MMEB meta-task: retrieval or vqa
    prompts: Tuple[str, str, str, str]
    candidate_instruction: str = ""   # for image candidates in MMEB layouts; "" for text

    @property
    def instruction(self) -> str:
        return self.prompts[0]

    @property
    def pair(self) -> str:
        """The M-BEIR evaluation pair name, e.g. ``synthshapes_task0``."""
        return f"{self.dataset.lower()}_task{self.task_id}"


TASK_SPECS = {
    "t2i": TaskSpec(
        "t2i", "SynthShapes", 10, 0, "text", "image", "SynthShapes_t2i", "retrieval",
        ("Find an image that matches the given caption.",
         "Retrieve the picture of the shapes described in the caption.",
         "Show me an image of this scene description.",
         "Which image shows the described shapes?"),
        IMAGE_CANDIDATE),
    "i2t": TaskSpec(
        "i2t", "SynthShapes", 10, 3, "image", "text", "SynthShapes_i2t", "retrieval",
        ("Find a caption describing the given image.",
         "Describe the shapes in this image with a caption.",
         "Retrieve the caption that matches this picture.",
         "Which description fits the given image?")),
    "composed": TaskSpec(
        "composed", "SynthEdit", 11, 7, "image,text", "image", "SynthEdit", "retrieval",
        ("Given an image, find a similar image with the described changes.",
         "Apply the modification to the image and find the result.",
         "Retrieve the image after the described edit.",
         "Find the picture that shows this image with the change applied."),
        IMAGE_CANDIDATE),
    "vqa": TaskSpec(
        "vqa", "SynthVQA", 12, 6, "image,text", "text", "SynthVQA", "vqa",
        ("Answer the question about the given image.",
         "Look at the image and answer the question.",
         "Find the answer to the question about this picture.",
         "Retrieve the short answer for the question on this image.")),
    "doc": TaskSpec(
        "doc", "SynthDocs", 13, 0, "text", "image", "SynthDocs", "retrieval",
        ("Find the document image that can answer the given query.",
         "Retrieve the page that answers the question.",
         "Which document page contains the answer to this question?",
         "Find the page screenshot with the answer."),
        PAGE_CANDIDATE),
}
TASKS = tuple(TASK_SPECS)


def mmeb_text(instruction: str, text: Optional[str], has_image: bool) -> str:
    """An MMEB query string: ``<|image_1|>\\n`` for an image, the instruction, the text,
    and a closing newline (as in MMEB-train's ``qry`` and MMEB-eval's ``qry_text``)."""
    body = " ".join(p for p in (instruction, text) if p)
    return f"{IMAGE_TOKEN}\n{body}\n" if has_image else f"{body}\n"


def mmeb_candidate(spec: TaskSpec, text: Optional[str], has_image: bool) -> str:
    """An MMEB candidate string: text candidates are the bare text (``pos_text`` "Yes"),
    image candidates the image token and the task's candidate instruction."""
    if not has_image:
        return text or ""
    return mmeb_text(spec.candidate_instruction, text, True)
