"""conftest.py: lets the tests import moejit from this source tree without `pip install`, and
holds the fixtures the suites share: the library without a GPU, the library on a GPU, and a cache
folder of their own for every test."""
import sys
from pathlib import Path

import pytest

_PYTHON_DIR = str(Path(__file__).resolve().parents[1])
if _PYTHON_DIR not in sys.path:
    sys.path.insert(0, _PYTHON_DIR)

from moejit import MoejitError, Status, _capi  # noqa: E402  (after the path)


@pytest.fixture(scope="module")
def lib() -> _capi.Library:
    """libmoejit (layer descriptors, offline plans: no GPU needed); skips when it does not load."""
    try:
        return _capi.load_library()
    except MoejitError as e:
        pytest.skip(f"libmoejit not loadable (set MOEJIT_LIBRARY): {e}")


@pytest.fixture(scope="module")
def lib_on_gpu() -> None:
    """Skips unless torch sees a GPU and libmoejit loads and finds it."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import moejit
    from moejit import _runtime

    try:
        moejit.library_path()
    except MoejitError as e:
        pytest.skip(f"libmoejit not loadable (set MOEJIT_LIBRARY): {e}")
    try:
        _runtime.context(torch.cuda.current_device())
    except MoejitError as e:
        if e.status == Status.ERR_NO_DEVICE:
            pytest.skip(f"libmoejit finds no device: {e}")
        raise


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Contexts made in a test keep their cubins and tuning records out of the user's cache."""
    monkeypatch.setenv("MOEJIT_CACHE_DIR", str(tmp_path / "moejit-cache"))
