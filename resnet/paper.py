"""The paper's numbers, each defined once and cited once.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition" (2015). Everything else in
the package imports these names instead of restating the numbers.
"""

from __future__ import annotations

# Section 4.2 (CIFAR-10): "We use a weight decay of 0.0001 and momentum of 0.9 ... These models are
# trained with a mini-batch size of 128 ... We start with a learning rate of 0.1, divide it by 10 at
# 32k and 48k iterations, and terminate training at 64k iterations, which is determined on a 45k/5k
# train/val split." Augmentation: "4 pixels are padded on each side, and a 32x32 crop is randomly
# sampled from the padded image or its horizontal flip."
ITERATIONS = 64_000
LR_DROP_ITERATIONS = (32_000, 48_000)
LR_DROP_FACTOR = 0.1
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 128
CROP_PADDING = 4
VALIDATION_SIZE = 5_000

# Section 4.2, ResNet-110: "we use 0.01 to warm up the training until the training error is below
# 80% (about 400 iterations), and then go back to 0.1".
WARMUP_LR = 0.01
WARMUP_UNTIL_TRAIN_ERROR = 80.0

# CIFAR-10's training set (section 4.2: "50k training images").
TRAINING_IMAGES = 50_000
# One epoch of the 50k training images at batch 128, full batches only: the window over which the
# final training error is averaged (64,000 = 164 x 390 + 40, so the last epoch is partial).
STEPS_PER_EPOCH = TRAINING_IMAGES // BATCH_SIZE

# ImageNet top-1 error (%, 10-crop testing), Tables 2 and 3: for reference beside our CIFAR numbers.
IMAGENET_TOP1_ERROR = {
    ("plain18", "none"): (27.94, "Table 2"),
    ("plain34", "none"): (28.54, "Tables 2, 3"),
    ("resnet18", "A"): (27.88, "Table 2"),
    ("resnet34", "A"): (25.03, "Table 3"),
    ("resnet34", "B"): (24.52, "Table 3"),
    ("resnet34", "C"): (24.19, "Table 3"),
}
# ImageNet top-5 error (%, 10-crop testing), Table 3 (Table 2 gives top-1 only).
IMAGENET_TOP5_ERROR = {
    ("plain34", "none"): 10.02,
    ("resnet34", "A"): 7.76,
    ("resnet34", "B"): 7.46,
    ("resnet34", "C"): 7.40,
}
# CIFAR-10 test error (%), Table 6. ResNet-110 is reported as the best of 5 runs (6.43) with the
# mean and std of those runs beside it ("6.61 +- 0.16").
CIFAR_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}
CIFAR_RESNET110_MEAN_STD = (6.61, 0.16)

# Section 3.4 (ImageNet): "The image is resized with its shorter side randomly sampled in [256, 480]
# for scale augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip,
# with the per-pixel mean subtracted. The standard color augmentation in [21] is used." Testing: "the
# standard 10-crop testing" (Table 2's and 3's numbers), on images whose shorter side is 256 (AlexNet's
# size for the crops; the centre crop of it is the single-view validation of Figure 4's bold curves).
IMAGENET_SCALE_RANGE = (256, 480)
IMAGENET_CROP = 224
IMAGENET_TEST_SHORTER_SIDE = 256
# [21], Krizhevsky et al. 2012, section 4.1: add to every pixel of an image the RGB principal components
# of ImageNet's pixels times their eigenvalues times a N(0, 0.1) draw per image. The eigen-decomposition
# (pixels scaled to [0, 1]) as fb.resnet.torch, the authors' released training code, states it.
IMAGENET_LIGHTING_STD = 0.1
IMAGENET_RGB_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_RGB_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                             (-0.5808, -0.0045, -0.8140),
                             (-0.5836, -0.6948, 0.4203))
