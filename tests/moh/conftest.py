import pytest

from moh.config import Config

# A model small enough that a whole two-phase run takes a second or two.
TINY = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=64, pretrain_epochs=1,
            instruct_epochs=1, batch_size=64, instruct_batch_size=16, log_every=1,
            eval_prompts=4, eval_max_new_tokens=6, warmup_steps=2,
            threads=1)  # fixed: the automatic count follows the machine's load (moh/threads.py)


@pytest.fixture
def tiny_cfg():
    def make(**kw):
        return Config(**{**TINY, **kw})
    return make
