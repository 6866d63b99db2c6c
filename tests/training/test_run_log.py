"""The training log stays one row per epoch across kills: rows after the resumed checkpoint,
and a row or header cut by a kill, are dropped before training goes on."""

from cmrseg.training.run_log import LOG_COLUMNS, RunLog


def _epochs(path):
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


def test_keep_epochs_drops_rows_after_the_checkpoint_and_cut_lines(tmp_path):
    log = RunLog(tmp_path, enabled=True)
    for e in range(1, 6):
        log.log({"epoch": e, "stage": "seg_as", "loss": 0.5})
    with open(log.path, "a") as fh:
        fh.write("6,seg_as,0.0")  # killed in the middle of writing epoch 6
    log.keep_epochs(3)  # the checkpoint resumed from is epoch 3
    assert _epochs(log.path) == [1, 2, 3]
    for e in range(4, 7):
        log.log({"epoch": e, "stage": "seg_as", "loss": 0.5})
    assert _epochs(log.path) == [1, 2, 3, 4, 5, 6]
    assert log.path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
    log.keep_epochs(6)  # nothing to drop: the file is left as it is
    assert _epochs(log.path) == [1, 2, 3, 4, 5, 6]
    log.close()


def test_a_header_cut_by_a_kill_starts_the_log_again(tmp_path):
    log = RunLog(tmp_path, enabled=False)
    log.path.write_text("epoch,sta")
    log.keep_epochs(0)  # disabled (not rank 0): leaves the file alone
    assert log.path.read_text() == "epoch,sta"
    log = RunLog(tmp_path, enabled=True)
    log.keep_epochs(0)
    log.log({"epoch": 1, "stage": "seg_as"})
    assert log.path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS) and _epochs(log.path) == [1]
    log.close()
