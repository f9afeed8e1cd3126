"""Why shortcuts help, measured on the study's own networks (issue: three measurements from the papers that
followed He et al. 2015): ``lesion`` (Veit et al. 2016), ``shattering`` (Balduzzi et al. 2017), ``surface``
(Li et al. 2018); ``run`` measures one trained run and logs it to MLflow. Each measurement is a function of
(network, weights, data)."""
