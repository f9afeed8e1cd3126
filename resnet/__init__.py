"""Plain vs residual networks: the degradation study of He et al. (2015), tracked in MLflow.

The package in layers, each importing only from the layers above it in this list (tests/test_layout.py
checks it, and that nothing here imports in a circle):

* ``paper``, ``paths``, ``readings``: the paper's numbers; where generated files go; how each analysis
  reads its measurement, as its paper defines it (torch-free: the analyses and the report share it).
* ``tracking/``: MLflow. ``keys`` (every tag, parameter and status name), ``store`` (which store,
  experiment and run; logging), ``server`` (``make server``), ``ui`` (``make ui``). Neither torch nor
  the training configuration.
* ``models``, ``measures``, ``data``, ``imagenet``, ``config``: the networks, what they cost, CIFAR-10
  as tensors, ImageNet as a list of files, and one run's validated configuration.
* ``analysis_config``: one analysis of one trained run, validated (what the study runner passes on).
* ``training/``: one run. ``engine`` (a step on the device), ``schedule``, ``stop`` (signals),
  ``loop`` (epochs, checkpoints, MLflow), ``imagenet_input`` (the paper's ImageNet views and 10-crop
  test), ``bench`` (``make bench``).
* ``analysis/``: why shortcuts help, measured on a trained run's network: ``lesion`` (Veit et al. 2016),
  ``shattering`` (Balduzzi et al. 2017), ``surface`` (Li et al. 2018), and ``run`` (one analysis logged to
  MLflow, linked to the run it measured).
* ``studies/``: many runs. ``spec`` (a study file as cells), ``plan`` (what is left, the parent run,
  the devices), ``pool`` (cells as papermill processes), the ``local`` and ``slurm`` executors,
  ``analyses`` (a profile's analyses of its finished runs, as cells of the same pool),
  ``cli`` (``python -m resnet.study``), and ``notebook``, the driver that ``notebooks/train.ipynb`` and
  ``analyse.ipynb`` call: the one place where studies reach training and the analyses.
* ``report/``: the page from finished runs. ``results``, ``statistics``, ``figures``, ``sections``,
  ``ablation``, ``why_shortcuts``, ``build`` (``python -m resnet.report``). Torch-free: it reads MLflow,
  never a model.
"""
