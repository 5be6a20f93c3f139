"""The advantage estimators, one module each (or one per paper): each declares its options (a
dataclass whose defaults are its vetted recipe), its math and its registration with
riskpo.algo.registry.register_estimator. riskpo.algo.registry imports every module here the
first time it is asked, so adding an estimator is adding a module (and its preset in
conf/algorithm/). Nothing here imports its modules: the registry does."""
