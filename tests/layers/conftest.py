import importlib.util

import pytest

# every backend that runs on this machine's CPU; cuda has its own simulator tests
CPU_BACKENDS = ["reference"] + (["cpu"] if importlib.util.find_spec("tagger.ops.cpu") else [])


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param
