"""Overrides that shrink the default config to a seconds-long run (tiny Glow on 8x8 digits)."""

TINY = [
    "data.name=digits8",
    "model.options.image_shape=[1,8,8]",
    "model.options.steps=1",
    "model.options.hidden=8",
    "train.batch_size=64",
    "train.eval_batch_size=500",
    "train.eval_every=0",
    "train.num_samples=4",
    "train.temperatures=[0.7]",
    "train.progress=false",
    "train.device=cpu",
    "optim.warmup_steps=2",
]
