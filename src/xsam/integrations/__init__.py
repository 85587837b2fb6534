"""Integrations with training frameworks. Each submodule needs its framework installed:

* :mod:`xsam.integrations.lightning` — ``SAMModule``, a ``LightningModule`` base class
  (``pip install "torch-xsam[lightning]"``);
* :mod:`xsam.integrations.transformers` — ``SAMTrainer``, a Hugging Face ``Trainer`` subclass
  (``pip install "torch-xsam[transformers]"``);
* :mod:`xsam.integrations.accelerate` — ``sam_update``, one SAM-family update over a list of
  micro-batches with an ``Accelerator`` (``pip install "torch-xsam[accelerate]"``).

What they share (:mod:`xsam.integrations.core`) uses only torch: :func:`~xsam.integrations.core.
finish_update` runs the ascent passes and the descent of the lower-level API after a clean
pass, with forward-only α probes and clipping applied to the final direction ``d``.

See docs/integrations.md.
"""
