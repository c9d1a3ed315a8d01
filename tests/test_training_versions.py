"""Version numbers the server can carry: the protocols' version fields are int64."""

import pytest

from common.contract import MAX_VERSION
from tests.conftest import tiny_classifier
from training.repository import existing_versions, write_version


@pytest.mark.parametrize("where", ["highest-version-file", "version-directory"])
def test_no_version_past_int64_is_published(tmp_path, where):
    """A version published by hand as 2^63-1 (and written into .highest-version, as README
    asks) made the next run publish 9223372036854775808 with exit 0: a version the server
    skips, so the run's model was never served."""
    (tmp_path / "mlp").mkdir()
    if where == "highest-version-file":
        (tmp_path / "mlp" / ".highest-version").write_text(f"{MAX_VERSION}\n")
    else:
        (tmp_path / "mlp" / str(MAX_VERSION)).mkdir()
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'mlp'}: version {MAX_VERSION} is "
                       rf"taken and no number is left \(a version is at most {MAX_VERSION}, "
                       r"the protocols' int64\)$"):
        write_version(tmp_path, "mlp", tiny_classifier(1), {})
    assert existing_versions(tmp_path, "mlp") == ([MAX_VERSION] if where != "highest-version-file"
                                                  else [])
    assert [p.name for p in (tmp_path / "mlp").iterdir() if p.name.startswith(".staging")] == []
