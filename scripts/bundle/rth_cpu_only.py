# Runtime hook of the bundle's default 'cpu' flavour (build.spec): that flavour leaves out the CUDA
# libraries torch loads only on a GPU (cuDNN's engines, cuSOLVER, NVRTC's builtins, triton), so
# torch must never see a GPU, else a laptop with one would fail at its first convolution instead of
# training on the CPU. An explicit CUDA_VISIBLE_DEVICES from the user is overridden on purpose:
# the 'cuda' flavour is the bundle that uses the GPU.
import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""
