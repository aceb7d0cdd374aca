"""`contextcache query "…"`: the passages most relevant to a question, with their citations.

Each passage shows its score, document title, source and chunk; the words of the question
that the passage contains are highlighted (a word also matches its plural or other endings:
"senator" marks "Senators").
"""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from cli.options import JsonOption, ProjectOption
from cli.output import as_dict, err, out, print_json, retrieval_mode
from cli.session import Session
from contextcache.v1 import query_pb2

MODES = {
    "hybrid": query_pb2.RETRIEVAL_MODE_HYBRID,
    "dense": query_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": query_pb2.RETRIEVAL_MODE_KEYWORD,
}
HIGHLIGHT = "bold yellow"
_WORD = re.compile(r"\w+")
_ENDINGS = ("ies", "es", "s", "ing", "ed")
# Words too common to be worth marking.
_STOPWORDS = frozenset(
    "the and for are was were with that this what which who whom whose when where why how "
    "did does has have had not but from they them their there these those into onto upon "
    "can could would should shall will may might must its our your his her him she you".split()
)


def query_terms(question: str) -> list[str]:
    """The question's words worth marking, cut to a stem that its other forms share."""
    terms = set()
    for word in _WORD.findall(question.lower()):
        if len(word) < 3 or word in _STOPWORDS:
            continue
        for ending in _ENDINGS:
            if word.endswith(ending) and len(word) - len(ending) >= 4:
                word = word[: -len(ending)]
                break
        terms.add(word)
    return sorted(terms, key=len, reverse=True)


def highlighted(text: str, question: str) -> Text:
    rich_text = Text(text)
    terms = query_terms(question)
    if terms:
        pattern = r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\w*"
        rich_text.highlight_regex(re.compile(pattern, re.IGNORECASE), HIGHLIGHT)
    return rich_text


def _mode_option(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"must be one of {', '.join(MODES)}")
    return value


def query(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    project: ProjectOption = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Passages to return (1-50).")] = 5,
    mode: Annotated[
        str,
        typer.Option(
            help="hybrid, dense (meaning only) or keyword (words only).", callback=_mode_option
        ),
    ] = "hybrid",
    min_score: Annotated[
        float | None, typer.Option(help="Drop passages scoring below this.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Ask a project a question: the most relevant passages, with score and citation."""
    session: Session = ctx.obj
    project_id = session.project_id(project)
    request = query_pb2.QueryRequest(
        project_id=project_id, query=question, top_k=top_k, mode=MODES[mode]
    )
    if min_score is not None:
        request.min_score = min_score
    answer = session.query.Query(
        request, metadata=session.metadata(project_id), timeout=session.timeout
    )
    if json_output:
        print_json(as_dict(answer))
        return
    if not answer.passages:
        err.print("No passage matched.")
        return
    for rank, passage in enumerate(answer.passages, start=1):
        title = passage.document_title or passage.source
        source = f"  [dim]{escape(passage.source)}[/]" if passage.source != title else ""
        out.print(
            f"[bold]{rank}.[/] score {passage.score:.4f}  [bold cyan]{escape(title)}[/]{source}"
            f"  chunk {passage.chunk_index}"
        )
        text = highlighted(" ".join(passage.text.split()), question)
        if out.is_terminal:
            out.print(Padding(text, (0, 0, 1, 3)))
        else:  # one line per passage for whoever reads the pipe
            out.print(Text("   ") + text, soft_wrap=True)
            out.print()
    timings = answer.timings
    err.print(
        f"{len(answer.passages)} passage{'s' if len(answer.passages) != 1 else ''}, "
        f"{retrieval_mode(answer.mode)}, "
        f"{timings.total_ms:.0f} ms" + (" (from the cache)" if answer.cached else "")
    )
