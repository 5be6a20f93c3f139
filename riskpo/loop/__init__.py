"""The single-controller driver: the training loop, how a step's rollouts are made (in turn or
ahead of training) and the evaluation of the policy on held-out rows."""
