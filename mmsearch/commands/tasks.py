"""`mmsearch tasks`: list the task library."""
from __future__ import annotations

from ._common import print_json, print_table


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list named tasks and their instructions",
                       description="List named tasks: MMEB datasets, generic tasks, and M-BEIR pairs.")
    p.add_argument("--source", default=None, help="only tasks from this source (mmeb, generic, mbeir)")
    p.add_argument("--mbeir-instructions", metavar="TSV", default=None,
                   help="also load M-BEIR pairs from its instructions/query_instructions.tsv")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import tasks

    if args.mbeir_instructions:
        for task in tasks.load_mbeir_instructions(args.mbeir_instructions).values():
            tasks.register_task(task)
    found = tasks.list_tasks(source=args.source)
    if args.json:
        print_json([t.to_dict() for t in found])
        return 0
    rows = [(t.name, f"{t.query_modality}->{t.candidate_modality}", t.query_instruction or "(none)",
             t.candidate_instruction or "(raw)") for t in found]
    print_table(("TASK", "MODALITY", "QUERY INSTRUCTION", "CANDIDATE INSTRUCTION"), rows, (28, 22, 60, 40))
    return 0
