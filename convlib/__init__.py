"""convlib: a from-scratch ConvNet library with hand-written backprop and Numba kernels.

    import convlib as cl
    net = cl.Sequential(cl.Conv2d(3, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Flatten(), cl.Linear(16 * 16 * 16, 2))
    logits = net(x)                                   # x float32 (N, 3, 32, 32)
    loss, dlogits = cl.softmax_cross_entropy(logits, y)
    net.backward(dlogits)
"""
from . import data, gradcheck, optim
from .backend import cuda_available, to_device, to_host, use_kernels
from .io import load, save
from .kernels.cpu.threads import get_num_threads, set_num_threads
from .layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, GroupNorm
from .layers import Layer, LeakyReLU, Linear, MaxPool2d, Parameter, ReLU, Sigmoid, Tanh
from .losses import CrossEntropyLoss, softmax, softmax_cross_entropy
from .model import Residual, Sequential
from .rng import manual_seed
from .train import History, evaluate, fit, iterate_batches, predict_proba

__version__ = "0.2.0"

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss", "Dropout", "Flatten",
    "GroupNorm", "History", "Layer", "LeakyReLU", "Linear", "MaxPool2d", "Parameter", "ReLU", "Residual", "Sequential",
    "Sigmoid", "Tanh",
    "cuda_available", "data", "evaluate", "fit", "get_num_threads", "gradcheck", "iterate_batches", "load",
    "manual_seed", "optim", "predict_proba", "save", "set_num_threads", "softmax", "softmax_cross_entropy",
    "to_device", "to_host", "use_kernels"]
