"""`riskpo-train ... rehearse=true`: a GPU recipe run for 2 steps on this machine's CPUs
(rehearsal.py), with its plan of what is scaled and kept (plan.py), the scaled model
(models.py), rows of the recipe's format (data.py) and the learner-step memory measured at
the rehearsal's scale (probe.py, which imports only torch, transformers and DeepSpeed)."""
