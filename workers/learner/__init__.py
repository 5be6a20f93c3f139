"""The learner: data-parallel DeepSpeed ranks as Ray actors (`LearnerGroup`), configured by
`LearnerConfig`, behind a narrow backend interface (`LearnerBackend`)."""

from workers.learner.config import LearnerConfig

__all__ = ["LearnerConfig"]
