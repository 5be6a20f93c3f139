"""The tasks, one module each; riskpo.data.registry imports every module here the first time
it is asked, and each registers its Task (see the registry's docstring)."""
