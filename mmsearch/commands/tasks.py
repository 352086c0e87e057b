"""`mmsearch tasks`: list the task library, or the instructions a model will use."""
from __future__ import annotations

from ._common import add_family_arg, print_json, print_table


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list named tasks and their instructions",
                       description="List named tasks: MMEB datasets, generic tasks, and M-BEIR pairs.")
    p.add_argument("--source", default=None, help="only tasks from this source (mmeb, generic, mbeir)")
    p.add_argument("--mbeir-instructions", metavar="TSV", default=None,
                   help="also load M-BEIR pairs from its instructions/query_instructions.tsv")
    p.add_argument("--model", default=None,
                   help="show the instructions this model will use: its own task prompts first, then its "
                        "family's, then the library's (reads the checkpoint's files, loads no weights)")
    add_family_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import tasks

    if args.mbeir_instructions:
        for task in tasks.load_mbeir_instructions(args.mbeir_instructions).values():
            tasks.register_task(task)
    found = tasks.list_tasks(source=args.source)
    if args.model is not None or args.family is not None:
        found = _as_model_uses(found, args.model, args.family)
    if args.json:
        print_json([t.to_dict() for t in found])
        return 0
    rows = [(t.name, f"{t.query_modality}->{t.candidate_modality}", t.query_instruction or "(none)",
             t.candidate_instruction or "(raw)") for t in found]
    print_table(("TASK", "MODALITY", "QUERY INSTRUCTION", "CANDIDATE INSTRUCTION"), rows, (28, 22, 60, 40))
    return 0


def _as_model_uses(found, model, family):
    """The tasks as `model` resolves them: its own and its family's prompts, then the library's
    (tasks only the model knows come first)."""
    import dataclasses

    from ..encoders.factory import describe_checkpoint
    from ..encoders.recipes import task_instruction
    from ..tasks import GENERIC, Task

    ck = describe_checkpoint(model, family)
    known = {t.name for t in found}
    extra = [Task(name=n, query_instruction="", candidate_instruction="", query_modality="text",
                  candidate_modality="text", description=f"{ck.recipe.name} task", source=GENERIC)
             for n in list(ck.tasks) + list(ck.recipe.tasks) if n not in known]
    out = []
    for t in extra + list(found):
        q = task_instruction(ck.recipe, ck.tasks, t.name, "query")
        c = task_instruction(ck.recipe, ck.tasks, t.name, "candidate")
        out.append(dataclasses.replace(t, query_instruction=q, candidate_instruction=c,
                                       source=_origin(ck, t.name, t.source)))
    return out


def _origin(ck, name, library_source):
    if name in ck.tasks:
        return "model"
    return ck.recipe.name if name in ck.recipe.tasks else library_source
