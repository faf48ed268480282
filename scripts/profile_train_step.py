"""Profile EAGLE-3 training steps (torch profiler) on stored hidden states: where a step's time goes.

Builds the draft as the trainer does, reads ``--batches`` batches of ``--batch-size`` rows (in file
order, padded) from a finished capture, runs two untimed steps, then profiles ``--steps`` steps
(forward, backward, AdamW) and prints tokens/s and the operator table (self CPU time). Uses only
the API both the current trainer and earlier commits share, so it can profile an older checkout
(``PYTHONPATH=<checkout> python scripts/profile_train_step.py ...``) for a before/after comparison.

    python scripts/profile_train_step.py --target DIR --data train.jsonl --capture CAPTURE_DIR
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import profile

from draft_models.registry import get_draft_type
from specforge.capture import ShardDataset, collate_captured
from specforge.data.tokenize import load_tokenized
from specforge.targets.loader import load_target
from specforge.train.ttt import ttt_forward
from specforge.vocab import build_draft_vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--data", required=True, help="the conversations the capture was made from")
    ap.add_argument("--capture", required=True, help="a finished capture of layers 2, L/2, L-3 (at least)")
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ttt-steps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=25, help="operator rows to print")
    args = ap.parse_args()
    target = load_target(args.target, need_chat_template=False)
    ds, _ = load_tokenized(args.data, target.tokenizer, 2048, False, None)
    layers = [2, target.model.config.num_hidden_layers // 2, target.model.config.num_hidden_layers - 3]
    kind = get_draft_type("eagle3")
    cfg = kind.config_cls.from_target(target.model.config, 8192, layers)
    vocab = build_draft_vocab(zip(ds["input_ids"], ds["loss_mask"]), target.vocab_size, 8192)
    draft = kind.model_cls(cfg)
    draft.set_vocab(vocab.d2t, vocab.t2d)
    draft.load_target_embedding(target.model.get_input_embeddings().weight.detach())
    shards = ShardDataset(args.capture, layers=layers)
    bs, n = args.batch_size, args.steps + 2
    batches = [collate_captured([shards[i] for i in range(j * bs, (j + 1) * bs)], 2) for j in range(n)]
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4)

    def step(batch) -> None:
        ttt_forward(draft, batch, target.model.lm_head, args.ttt_steps, 0.8).loss.backward()
        opt.step()
        opt.zero_grad()

    for b in batches[:2]:
        step(b)
    tokens = sum(int(b.attention_mask.sum()) for b in batches[2:])
    t0 = time.time()
    with profile() as prof:
        for b in batches[2:]:
            step(b)
    print(
        f"{tokens / (time.time() - t0):.0f} real tokens/s under the profiler ({tokens} tokens, {args.steps} steps)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
