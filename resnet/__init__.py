"""Plain vs residual networks: the degradation study of He et al. (2015), tracked in MLflow.

The package in layers, each importing only from the layers above it in this list (tests/test_layout.py
checks it, and that nothing here imports in a circle):

* ``paper``, ``paths``, ``readings``, ``settings``, ``hardware``: the paper's numbers; where generated files
  go; how each analysis reads its measurement, as its paper defines it (torch-free: the analyses and the report
  share it); settings read from plain values and the errors bad input raises; a run's precision, memory layout
  and machine.
* ``tracking/``: MLflow. ``keys`` (every tag, parameter and status name), ``store`` (which store,
  experiment and run; logging), ``server`` (``make server``), ``ui`` (``make ui``). Neither torch nor
  the training configuration.
* ``models``, ``measures``: the plain and residual networks, and what they cost.
* ``training/``: what the CIFAR-10 and ImageNet runs share: ``engine`` (the precision, the optimiser, a step on
  the device, evaluation, the Figure 7 statistics), ``distributed``, ``stop`` (signals), ``console``.
* ``cifar/`` and ``imagenet/``, side by side (neither imports the other): each data set's ``data``, one run's
  validated ``config``, its ``input`` on the device, its ``loop`` (epochs or windows, checkpoints, MLflow) and
  ``bench`` (``make bench``); CIFAR-10 also its ``schedule``, kept ``checkpoints`` and the step-time ``probe``.
* ``analysis/``: why shortcuts help, measured on a trained CIFAR-10 run's network: ``config`` (one analysis,
  validated), ``lesion`` (Veit et al. 2016), ``shattering`` (Balduzzi et al. 2017), ``surface`` (Li et al.
  2018), and ``run`` (one analysis logged to MLflow, linked to the run it measured).
* ``studies/``: many runs. ``spec`` (a study file as cells), ``plan`` (what is left, the parent run,
  the devices), ``pool`` (cells as papermill processes), the ``local`` and ``slurm`` executors,
  ``analyses`` (a profile's analyses of its finished runs, as cells of the same pool),
  ``cli`` (``python -m resnet.study``), and ``notebook``, the driver that ``notebooks/train.ipynb`` and
  ``analyse.ipynb`` call: the one place where studies reach training and the analyses (elsewhere they read
  configurations and data only).
* ``report/``: the page from finished runs. ``results``, ``statistics``, ``figures``, ``sections``,
  ``ablation``, ``why_shortcuts``, ``build`` (``python -m resnet.report``). Torch-free: it reads MLflow,
  never a model.
"""
