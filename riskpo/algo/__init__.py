"""The algorithm: advantage estimators (RiskPO and the baselines it is compared with), risk
measures, bundles, policy losses, entropy controls and their metrics, as pure tensor code. It
imports nothing of the project but riskpo.options: no Ray, no I/O, no workers."""
