"""The entry tasks, one module each, as functions of their composed config: ``train``,
``evaluate``, ``predict`` (pitch of files), ``separate`` (stems of files) and ``generate``
(VAE samples). :mod:`audiolab.cli` runs them as Hydra apps; ``predict`` and ``separate``
share the per-file runner :mod:`audiolab.utils.file_jobs`."""
