import peerstore
from peerstore.errors import ConfigError, PeerstoreError


def test_package_imports_and_errors_share_a_root():
    assert peerstore.__version__
    err = ConfigError("config.yaml", "policy.parity", "expected an integer >= 0")
    assert isinstance(err, PeerstoreError)
    assert str(err) == "config.yaml: policy.parity: expected an integer >= 0"
