"""CLI contract audit (session 45): bad input answered with one line naming the file at fault and its problem."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli


@pytest.mark.parametrize("missing", ["pred", "ref"])
def test_cells_evaluate_names_the_missing_side(tmp_path, missing):
    """`cells evaluate` with one side missing names that path as not found (as `medseg evaluate` does), not the
    other, existing folder as "must both be files or both be folders"; nothing is written."""
    import tifffile

    present = tmp_path / "present"
    present.mkdir()
    lab = np.zeros((16, 16), np.uint16)
    lab[2:6, 2:6], lab[9:14, 8:12] = 1, 2
    tifffile.imwrite(present / "img_labels.tif", lab)
    absent = tmp_path / "absent"
    pred, ref = (absent, present) if missing == "pred" else (present, absent)
    out = tmp_path / "eval"
    res = run_cli("cells", "evaluate", "--pred", pred, "--ref", ref, "-o", out)
    assert_clean_error(res, str(absent), "not found")
    assert str(present) not in res.err
    assert not out.exists()
    from medseg.cells.evaluate import evaluate_cells
    from medseg.errors import InputError

    with pytest.raises(InputError, match=f"{absent}: (prediction|reference) not found"):  # the Python API too
        evaluate_cells(pred, ref, out)


def test_a_fold_beyond_the_plan_is_blamed_on_the_option(tmp_path):
    """`train --fold 9` on a plan of 4 folds: the option is wrong, not the plan ('invalid plan: fold 9 ...' blamed
    the plan, which holds a valid fold); nothing is written."""
    from test_train import tiny_plan

    plan = tiny_plan(tmp_path)
    folds = int(next(ln.split(":")[1] for ln in plan.read_text().splitlines() if ln.startswith("num_folds:")))
    res = run_cli("train", plan, "-o", tmp_path / "run", "--fold", str(folds + 5), "-q")
    assert_clean_error(res, f"--fold {folds + 5}", f"0..{folds - 1}")
    assert "invalid plan" not in res.err and not (tmp_path / "run").exists()
