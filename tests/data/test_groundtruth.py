"""Ground-truth pickles: plain data loads, anything else is refused without running it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from harness.data.groundtruth import load_groundtruth, safe_unpickle
from harness.errors import DataError


def write_gnd(path: Path, **changes: object) -> Path:
    gnd = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"easy": [0], "hard": np.array([1]), "junk": [], "bbx": [1.0, 2.0, 30.0, 40.0]},
            {"easy": [], "hard": [2], "junk": [0, 1], "bbx": np.array([0.0, 0.0, 5.0, 5.0])},
        ],
    }
    gnd.update(changes)
    path.write_bytes(pickle.dumps(gnd, protocol=2))
    return path


def test_plain_ground_truth_with_numpy_arrays_loads(tmp_path: Path) -> None:
    truth = load_groundtruth(write_gnd(tmp_path / "gnd.pkl"), query_sizes={"q0": (50, 50)})
    assert truth.imlist == ("a", "b", "c") and truth.qimlist == ("q0", "q1")
    assert np.asarray(truth.gnd[0]["hard"]).tolist() == [1]


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [RunsCode(marker)]}))
    with pytest.raises(
        DataError, match=r"gnd_evil.pkl: refused or unreadable pickle \(global pathlib.*Path.touch is not plain data\)"
    ):
        load_groundtruth(path)
    assert not marker.exists()
    os_system = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(DataError, match=r"global os.system is not plain data"):
        safe_unpickle(os_system, source="raw")
    assert not marker.exists()


def test_object_arrays_are_refused() -> None:
    with pytest.raises(DataError, match="numpy array of objects"):
        safe_unpickle(pickle.dumps(np.array([{"a": 1}], dtype=object)), source="x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"gnd": [{"easy": [3]}, {"easy": []}]},
            r"query 0 \(q0\): easy index 3 is not an image index \(an integer in \[0, 3\)\)$",
        ),
        ({"gnd": [{"easy": [0]}, {"junk": [-1]}]}, r"query 1 \(q1\): junk index -1 is not an image index"),
        ({"gnd": [{"easy": [0.0]}, {}]}, r"query 0 \(q0\): easy index 0.0 is not an image index"),
        ({"gnd": [{"easy": [0]}]}, r"1 gnd entry for 2 queries"),
        ({"gnd": [{"bbx": [5, 5, 1, 1]}, {}]}, r"query 0 \(q0\): bbx \[5.0, 5.0, 1.0, 1.0\] is not"),
        # Each of these was a traceback (TypeError, ValueError) or, for a name with folders, read outside the set.
        (
            {"gnd": [{"bbx": ["x", 0, 1, 1]}, {}]},
            r"query 0 \(q0\): bbx \['x', 0, 1, 1\] is not \[x1, y1, x2, y2\] numbers",
        ),
        ({"imlist": 5}, r"gnd.pkl: imlist is int, expected a list$"),
        ({"gnd": None}, r"gnd.pkl: gnd is NoneType, expected a list$"),
        (
            {"imlist": ["a", "../../etc/b", "c"]},
            r"imlist entry 1 '../../etc/b' is not an image name \(a file name without folders\)$",
        ),
        ({"qimlist": ["q0", 7]}, r"qimlist entry 1 7 is not an image name"),
        ({"imlist": ["a", "b", "a"]}, r"imlist names 'a' twice \(entries 0 and 2\)$"),
    ],
)
def test_structural_problems_name_the_query(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_groundtruth(write_gnd(tmp_path / "gnd.pkl", **change))


def test_box_outside_the_image_names_the_query(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"query 0 \(q0\): bbx .* outside the 20x20 image"):
        load_groundtruth(write_gnd(tmp_path / "gnd.pkl"), query_sizes={"q0": (20, 20)})


def test_truncated_file(tmp_path: Path) -> None:
    path = write_gnd(tmp_path / "gnd.pkl")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"gnd\.pkl: refused or unreadable pickle"):
        load_groundtruth(path)
