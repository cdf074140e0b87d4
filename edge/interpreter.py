"""Loading a TFLite interpreter from whichever runtime this machine has.

Order: ai_edge_litert (current LiteRT wheels), tflite_runtime (Raspberry Pi OS users,
2.14), then tensorflow.lite (a training machine). `*_edgetpu.tflite` files get the
Edge TPU delegate from libedgetpu.

Kernels: "default" is the runtime's own choice (ai-edge-litert runs int8 models through XNNPACK);
"builtin" asks for TFLite's built-in kernels without default delegates, which are what
tflite-runtime 2.14 runs int8 models with on a Raspberry Pi: bit-identical results across the two,
several times slower on x86 (`galaxy-edge bench --kernels builtin`; README, "Deploy on a Raspberry Pi").
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from types import ModuleType

from galaxy_edge.errors import GalaxyEdgeError

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
KERNELS = ("default", "builtin")
_EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class ModelError(GalaxyEdgeError):
    """A model file that is missing or cannot be loaded; the message names the path."""


def interpreter_module(preferred: str | None = None) -> ModuleType:
    """The first importable TFLite runtime module (or `preferred` if given)."""
    names = (preferred,) if preferred else RUNTIMES
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise GalaxyEdgeError(
        "no TFLite runtime found: install ai-edge-litert (`pip install -e .[edge]`), "
        "or tflite-runtime on Raspberry Pi OS"
    )


def runtime_name(module: ModuleType) -> str:
    return module.__name__.split(".")[0]


def _builtin_resolver(module: ModuleType):
    resolvers = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType
    return resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def load_interpreter(
    path: Path | str, threads: int | None = None, runtime: str | None = None, kernels: str = "default"
):
    """An allocated Interpreter for the model at path; clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if kernels not in KERNELS:
        raise GalaxyEdgeError(f"unknown kernels '{kernels}' (expected one of {', '.join(KERNELS)})")
    module = interpreter_module(runtime)
    options = {"experimental_op_resolver_type": _builtin_resolver(module)} if kernels == "builtin" else {}
    interpreter_class = module.Interpreter
    delegates = []
    if path.name.endswith("_edgetpu.tflite"):
        library = _EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
        try:
            delegates.append(module.load_delegate(library))
        except (ValueError, OSError, AttributeError) as error:
            raise ModelError(
                f"{path}: an Edge TPU model needs libedgetpu ({library}) and a Coral device: {error}. "
                "Install the Edge TPU runtime, or use the plain int8 model beside it"
            ) from None
    try:
        interpreter = interpreter_class(
            model_path=str(path), num_threads=threads, experimental_delegates=delegates or None, **options
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{path}: not a loadable TFLite model ({str(error).splitlines()[0]})") from None
    return interpreter
