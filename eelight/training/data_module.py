"""LightningDataModule over the WebDataset loaders of one stage."""

from __future__ import annotations

import lightning as L

from eelight.training.config import RunConfig


class ShardDataModule(L.LightningDataModule):
    """Train and validation loaders for `cfg.stage`. `data_seed` is `data.seed` plus the
    step a resumed run restarts from (a new slice of the stream, see training/run.py)."""

    def __init__(self, cfg: RunConfig, tokenizer, processor, data_seed: int) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.processor, self.data_seed = cfg, tokenizer, processor, data_seed

    def train_dataloader(self):
        from eelight.data.loader import BadSampleCounter, make_loader, make_pipeline

        d = self.cfg.data
        counter = BadSampleCounter(d.max_bad_samples, d.max_bad_fraction)
        train = make_pipeline(d.train_shards, shuffle=d.shuffle, seed=self.data_seed, subset=d.subset,
                              resampled=d.resampled, counter=counter, **self._common())
        return make_loader(train, d.num_workers, d.epoch_batches)

    def val_dataloader(self):
        from eelight.data.loader import make_loader, make_pipeline

        d = self.cfg.data
        if not d.val_shards:
            return []
        # every rank validates on the same batches (no split by node): a small held-out set
        return make_loader(make_pipeline(d.val_shards, max_batches=max(1, d.val_samples // d.batch_size),
                                         split_by_node=False, **self._common()))

    def _common(self) -> dict:
        d = self.cfg.data
        return dict(stage=self.cfg.stage, tokenizer=self.tokenizer, processor=self.processor,
                    template_name=d.template, system_prompt=d.system_prompt, image_placement=d.image_placement, batch_size=d.batch_size,
                    max_length=d.max_length)
