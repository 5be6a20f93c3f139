"""The single-controller driver: the training loop (trainer.py), how a step's rollouts are made
(in turn, rollouts.py, or ahead of training, pipeline.py), whether the engines give up shared
GPUs while the learner works (colocation.py), the worker groups it calls (contracts.py), and the
evaluation of the policy on held-out rows."""
