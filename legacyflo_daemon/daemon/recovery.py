"""Start-up recovery: repair what the last run left, before the daemon says READY.

Order matters, each step idempotent so that a crash during recovery is repaired by the next:

1. count a crash for every CSV that had running requests, unless its work went forward since
   its last counted crash (``StateStore.record_crash``); a CSV that took the daemon down
   ``max_crashes`` times without progress is poisoned: its unfinished requests fail, the file
   goes to ``failed/``, the other work goes on;
2. re-queue every running request (the copier resumes from the destination's content);
3. remove stale temp files and the per-request scratch directories a crash left;
4. count a crash for every CSV whose parsing or recording a crash cut short, set it aside after
   ``max_crashes`` or take it again; take every file of ``processing/`` the state store does
   not know (claimed, then the daemon died before recording it);
5. write the results of rejected rows whose result was never written, and retire every CSV
   whose requests are all finished.

Several daemons sharing a state (``[state] url``) and a spool: a starting node must not take
what another, alive, is doing. Steps 1-2 touch only the requests of this node's name and those
whose lease ran out (``take_over``, which every node also runs while it serves: that is how a
dead node's requests find a new one); step 3 removes this node's scratch directories only;
steps 4-5 run only on a node that takes files (``daemon.intake``), and while it holds the
``intake`` lock, so that no other node is between claiming a file and recording it.

Must not: copy mail, or wait for anything but local files and the state store.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import structlog

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.daemon.scheduler import WORK_PREFIX
from legacyflo_daemon.daemon.watcher import Watcher
from legacyflo_daemon.errors import StateError
from legacyflo_daemon.model import Status
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report.finisher import Finisher
from legacyflo_daemon.runtime.clock import utcnow
from legacyflo_daemon.spool import intake
from legacyflo_daemon.spool.directory import Spool
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.store import CsvRecord, StateStore

log = structlog.get_logger("legacyflo_daemon.daemon.recovery")


async def recover(
    cfg: Config,
    state: StateStore,
    lifecycle: Lifecycle,
    spool: Spool,
    outbox: Outbox,
    finisher: Finisher,
    watcher: Watcher,
) -> None:
    if lifecycle.node is None:
        running = state.with_status(Status.RUNNING)
        for csv_id in sorted({r.csv_id for r in running}):
            crashes = state.record_crash(csv_id)
            log.warning("crash_detected", csv=state.csv(csv_id).name, crashes=crashes)
            if crashes >= cfg.daemon.max_crashes:
                await _poison(state, spool, finisher, csv_id, crashes)
        requeued = lifecycle.requeue_all_running()
    else:
        requeued = len(await take_over(cfg, state, lifecycle, spool, finisher, mine=True))
    spool.remove_stale_temps()
    prefix = WORK_PREFIX if lifecycle.node is None else f"{WORK_PREFIX}{lifecycle.node}-"
    for scratch in outbox.dir.glob(f"{prefix}*"):  # left by a crash
        shutil.rmtree(scratch, ignore_errors=True)
    if cfg.daemon.intake:
        with state.exclusive("intake") as alone:
            if alone:
                await _recover_intake(cfg, state, spool, finisher, watcher)
            else:
                log.info("recovery_intake_left", reason="another daemon takes files right now")
    log.info("recovered", requeued=requeued)


async def take_over(
    cfg: Config,
    state: StateStore,
    lifecycle: Lifecycle,
    spool: Spool,
    finisher: Finisher,
    *,
    mine: bool = False,
) -> list[tuple[str, int]]:
    """A shared state: requeue the running requests whose node's lease ran out (and, with
    ``mine``, at start, this node's own from before a crash), counting a crash for each of
    their CSVs as a restart does; their (id, csv id). A CSV poisoned by its crashes fails
    only once no other node runs one of its requests."""
    now = utcnow()
    taken = lifecycle.take_over(now)
    if mine:
        taken += lifecycle.requeue_own()
    for csv_id in sorted({c for _, c in taken}):
        crashes = state.record_crash(csv_id)
        ids = sorted(rid for rid, c in taken if c == csv_id)
        log.warning("crash_detected", csv=state.csv(csv_id).name, crashes=crashes, requests=ids)
        busy = any(r.status is Status.RUNNING for r in state.requests(csv_id))
        if crashes >= cfg.daemon.max_crashes and not busy:
            await _poison(state, spool, finisher, csv_id, crashes)
    return taken


async def _recover_intake(
    cfg: Config, state: StateStore, spool: Spool, finisher: Finisher, watcher: Watcher
) -> None:
    """Steps 4 and 5 (see the module docstring)."""
    for record in state.unloaded_csvs():  # the daemon died while parsing or recording it
        with _per_file("reload", record.name):
            await _reload(cfg, state, spool, watcher, record)
    known = {c.name for c in state.unfinished_csvs()}
    for path in spool.processing_files():
        if path.name not in known:  # claimed, then the daemon died before recording it
            with _per_file("take", path.name):
                await watcher.take(path)
    for record in state.unfinished_csvs():
        with _per_file("complete", record.name):
            for rid in state.rejected_without_result(record.id):
                err = intake.row_error_from_json(state.row_error(rid) or {})
                with structlog.contextvars.bound_contextvars(request_id=rid):
                    await finisher.rejected(rid, record.name, err)
            await watcher.complete(record.id)


async def _reload(
    cfg: Config, state: StateStore, spool: Spool, watcher: Watcher, record: CsvRecord
) -> None:
    """A CSV whose parsing or recording a crash cut short: that crash counts against it (it
    may be the file that crashes the parser); after ``max_crashes`` it is set aside in
    ``failed/``, else it is taken again under the same record."""
    crashes = state.record_crash(record.id)
    log.warning("csv_recording_cut", csv=record.name, crashes=crashes)
    path = spool.processing / record.name
    if not path.exists():  # rejected as a whole, then the daemon died before forgetting it
        state.discard_csv(record.id)
        return
    if crashes >= cfg.daemon.max_crashes:
        why = (f"the daemon stopped unexpectedly {crashes} times while reading this CSV; "
               "it was set aside in failed/ so that the other work can go on")  # fmt: skip
        spool.finish(path, ok=False, error=why)
        state.discard_csv(record.id)
        watcher.whole_file_rejections += 1  # --once: exit 1
        log.error("csv_poisoned", csv=record.name, crashes=crashes)
        return
    state.clear_rows(record.id)
    await watcher.take(path, record.id)


@contextlib.contextmanager
def _per_file(step: str, name: str) -> Iterator[None]:
    """One file's recovery step: a failure (a name the file system refuses, a full disk, a
    bug) is logged with its traceback and the step left for the next start, never allowed to
    stop the daemon from starting and serving every other file. The state store's own errors
    still stop the start: without it nothing can be recovered safely."""
    try:
        yield
    except StateError:
        raise
    except Exception as exc:
        log.error("recovery_file_failed", step=step, file=name, error=str(exc), exc_info=exc)


async def _poison(
    state: StateStore, spool: Spool, finisher: Finisher, csv_id: int, crashes: int
) -> None:
    record = state.csv(csv_id)
    why = (f"the daemon stopped unexpectedly {crashes} times while processing this CSV; "
           "it was set aside in failed/ so that the other work can go on")  # fmt: skip
    for r in state.requests(csv_id):
        if not r.status.finished:
            with structlog.contextvars.bound_contextvars(request_id=r.id):
                await finisher.failed(r.id, record.name, state.load_request(r.id), why)
    path = spool.processing / record.name
    if path.exists():
        spool.finish(path, ok=False, error=why)
    state.finish_csv(csv_id, intake.summary(state, csv_id), utcnow())
    log.error("csv_poisoned", csv=record.name, crashes=crashes)
