"""`ovi queue ...`: submit, inspect and run jobs in a queue database: `--db` a SQLite file (default
$OVI_QUEUE_URL, else outputs/queue.db) or a `postgresql://` URL that a farm of runners shares.

The web stack (FastAPI, uvicorn, Socket.IO) is imported when `serve` runs, not when the parser is
built: every `ovi` command builds all parsers.

Each handler returns an exit code; bad input raises InputError (`ovi` maps it to exit 2).
Paths given on the command line (image, config, out) are made absolute before they are stored,
so a runner started from another folder finds them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from pathlib import Path

from ovi.commands.request_args import (
    add_request_arguments,
    config_ref,
    request_fields_from_args,
)
from ovi.errors import InputError
from ovi.inputs import ID_MAX, INT64_MAX, INT64_MIN, cli_int, cli_number
from ovi.queue.folders import ServerFolders
from ovi.queue.jobqueue import DEFAULT_DB, QUEUE_URL_ENV, STATES, JobQueue, QueuePolicy, default_queue_url
from ovi.queue.requests import check_engine_settings, validate_request
from ovi.runtime.runner import Runner, load_engine_factory
from ovi.runtime.shutdown import GracefulShutdown, interrupt_runner
from ovi.server.limits import ServerLimits

TOKEN_ENV = "OVI_QUEUE_TOKEN"


# -- shared options -----------------------------------------------------------------------------
def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, metavar="PATH|URL",
                   help=f"queue: a SQLite file or postgresql://user:pass@host:5432/db "
                        f"(default ${QUEUE_URL_ENV}, else {DEFAULT_DB})")


def _add_request_options(p: argparse.ArgumentParser, *, with_prompt: bool) -> None:
    """The per-clip and engine flags of `ovi generate` (shared, built from GenerateRequest)."""
    if with_prompt:
        p.add_argument("config", nargs="?", metavar="CONFIG", help="config yaml (or --config)")
        p.add_argument("--prompt", required=True, help="text prompt")
    add_request_arguments(p)
    p.add_argument("--priority", type=cli_int(INT64_MIN, INT64_MAX, "priority"), default=0,
                   help="higher runs first (default 0)")


def _request_from_args(args, *, with_prompt: bool) -> dict:
    """The request dict to store: the given fields, the config reference and the engine overrides."""
    fields, engine = request_fields_from_args(args)
    positional = getattr(args, "config", None)
    if positional and args.config_opt:
        raise InputError("give the config once: either CONFIG or --config")
    config = config_ref(positional or args.config_opt)
    if config:
        fields["config"] = config
    if engine:
        fields["engine"] = engine
    if "prompt" in fields:  # --set text_prompt=...: never silently replaced
        raise InputError("--set text_prompt: give the prompt with --prompt" if with_prompt else
                         "--set text_prompt: import-csv takes each prompt from the csv's "
                         "text_prompt column; remove it")
    if with_prompt:
        fields["prompt"] = args.prompt
    return fields


def check_db_path(db, *, create: bool) -> None:
    """One line naming the problem with --db, before the store touches the disk. Commands that
    only work on existing jobs (`create=False`) never create a file or folder."""
    db = default_queue_url() if db is None else db
    if "://" in str(db):  # a database URL: the store checks it
        return
    path = Path(db).expanduser()
    if path.is_dir():
        raise InputError(f"--db {db} is a folder; give the database file, e.g. {path / 'queue.db'}")
    if not path.exists():
        if not create:
            raise InputError(f"--db {db}: no queue database there; check the path (`ovi queue "
                             f"submit --db {db}` creates one)")
        folder = next((p for p in path.absolute().parents if p.exists()), None)
        if folder is not None and not folder.is_dir():
            raise InputError(f"--db {db}: {folder} is a file, not a folder; give a path in a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--db {db}: cannot create the folder {path.parent} ({exc.strerror}); "
                             f"give a path you can write") from None
    # SQLite writes a -wal and -shm file beside the database, also to read it.
    for needed in (path, path.parent) if path.exists() else (path.parent,):
        if not os.access(needed, os.R_OK | os.W_OK):
            raise InputError(f"--db {db}: {needed} is read-only for this user; the queue needs to "
                             f"write beside its database (fix the permissions, or copy it)")


def _open(args, *, create: bool = True) -> JobQueue:
    check_db_path(args.db, create=create)
    return JobQueue(args.db)


def _print_job_line(job: dict, waiting: str | None = None) -> None:
    prompt = job["request"].get("prompt", "")
    prompt = prompt if len(prompt) <= 50 else prompt[:47] + "..."
    extra = f"(waiting: {waiting})" if waiting else job["error"] or ""
    if job["state"] == "done" and job["result"]:
        extra = job["result"].get("mp4") or next(iter(job["result"].values()), "")
    print(f"{job['id']:>6}  {job['state']:<9} p={job['priority']:<3} {job['progress']*100:5.1f}%  "
          f"try {job['attempts']}  {prompt}  {extra}".rstrip())


# -- handlers -----------------------------------------------------------------------------------
def cmd_submit(args) -> int:
    request = validate_request(_request_from_args(args, with_prompt=True))
    cfg = check_engine_settings(request)
    with _open(args) as q:
        ids = q.submit_many(request.expand(default_seed=cfg.seed), priority=args.priority)
    print("\n".join(str(i) for i in ids))
    return 0


def cmd_list(args) -> int:
    with _open(args, create=False) as q:
        jobs = q.list(args.state, limit=args.limit)
        if args.json:
            for job in jobs:
                print(json.dumps(job, sort_keys=True))
        else:
            if q.paused:
                print("(queue is paused: `ovi queue resume` to run jobs)")
            waiting = q.why_waiting(jobs)
            for job in jobs:
                _print_job_line(job, waiting.get(job["id"]))
    return 0


def cmd_show(args) -> int:
    with _open(args, create=False) as q:
        job = q.get(args.id)
        if job is None:
            raise InputError(f"no job {args.id} in {q!r}; `ovi queue list` shows the ids")
        print(json.dumps(job, indent=2, sort_keys=True))
    return 0


def cmd_cancel(args) -> int:
    with _open(args, create=False) as q:
        for job_id in args.ids:
            job = q.cancel(job_id)
            note = "cancel requested (stops at the next step)" if job["state"] == "running" \
                else job["state"]
            print(f"{job_id}: {note}")
    return 0


def cmd_retry(args) -> int:
    with _open(args, create=False) as q:
        for job_id in args.ids:
            print(f"{job_id}: {q.retry(job_id)['state']}")
    return 0


def cmd_pause(args) -> int:
    with _open(args) as q:
        q.pause()
    print("paused: no new job starts; a running job finishes")
    return 0


def cmd_resume(args) -> int:
    with _open(args) as q:
        q.resume()
    print("resumed")
    return 0


def cmd_move(args) -> int:
    with _open(args, create=False) as q:
        job = q.move(args.id, before=args.before, after=args.after, priority=args.to_priority)
        order = [j["id"] for j in q.list("queued")]
        print(f"{job['id']}: priority {job['priority']}, place {order.index(job['id']) + 1} "
              f"of {len(order)}")
    return 0


def cmd_import_csv(args) -> int:
    base = _request_from_args(args, with_prompt=False)
    check_engine_settings({"prompt": "x", **base})
    mode, seed, n_times = base.pop("mode", None), base.pop("seed", None), base.pop("n", 1)
    with _open(args) as q:
        ids = q.import_csv(args.file, n_times=n_times, priority=args.priority, mode=mode,
                           seed=seed, base=base)
    print(f"queued {len(ids)} jobs" + (f" ({ids[0]}..{ids[-1]})" if ids else ""))
    return 0


def _engine_factory(args):
    return load_engine_factory(args.engine_factory) if args.engine_factory else None


def _folders(args, queue: JobQueue) -> ServerFolders:
    return ServerFolders.beside(queue.path, configs=args.configs, loras=args.loras,
                                uploads=args.uploads)


def _add_folders(p: argparse.ArgumentParser) -> None:
    """Where the names a REST request gives (config, loras, image) point; the same defaults for
    `serve` and `run`, so a separate runner finds what the server accepted."""
    p.add_argument("--configs", metavar="DIR", help="named configs NAME.yaml (default: DB folder/configs)")
    p.add_argument("--loras", metavar="DIR", help="named LoRA files (default: DB folder/loras)")
    p.add_argument("--uploads", metavar="DIR", help="uploaded images (default: DB folder/uploads)")


def cmd_run(args) -> int:
    policy = QueuePolicy(heartbeat_timeout=args.heartbeat_timeout, max_attempts=args.max_attempts)
    check_db_path(args.db, create=True)
    queue = JobQueue(args.db, policy=policy)
    # A served config is named as jobs name it: a yaml path absolute (as submit stores it).
    serves = None if not args.serves else [config_ref(c) for c in args.serves]
    runner = Runner(queue, engine_factory=_engine_factory(args), out_dir=args.out,
                    folders=_folders(args, queue), serves=serves, label=args.label,
                    heartbeat_interval=min(5.0, args.heartbeat_timeout / 4))
    # SIGTERM / SIGINT: the running job goes back to the queue at its next step and we exit;
    # a second signal exits at once (ovi.runtime.shutdown).
    shutdown = GracefulShutdown(interrupt_runner(runner))
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    with shutdown.handling_signals():
        try:
            count = runner.run(until_empty=args.until_empty, max_jobs=args.max_jobs)
        finally:
            runner.close()
    s = runner.stats
    print(f"ran {count} jobs: {s['done']} done, {s['failed']} failed, {s['cancelled']} cancelled, "
          f"{s['released']} handed back; {s['engine_loads']} engine loads", file=sys.stderr)
    if args.until_empty and queue.paused and queue.counts()["queued"]:
        print("queue is paused with jobs left: `ovi queue resume`", file=sys.stderr)
    queue.close()
    return shutdown.exit_code


def cmd_serve(args) -> int:
    from ovi.server.rest import create_app
    from ovi.server.browser import allowed_hosts_for
    from ovi.server.serve import serve

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.no_token and token:
        raise InputError(f"--no-token and a token (--token or ${TOKEN_ENV}) contradict; give one")
    if args.no_token:
        print(f"warning: serving on {args.host} without a token (--no-token): any program on this "
              f"machine{'' if args.host in ('127.0.0.1', 'localhost', '::1') else ' or network'} "
              f"can submit and cancel jobs", file=sys.stderr)
    elif token is None:  # as Jupyter does: a fresh token, shown once with the URL
        token = secrets.token_urlsafe(24)
    check_db_path(args.db, create=True)
    limits = ServerLimits(max_steps=args.max_steps, max_pixels=args.max_pixels,
                          max_frames=args.max_frames, max_prompt_chars=args.max_prompt_chars,
                          max_clips=args.max_clips, max_upload_bytes=int(args.max_upload_mb * 2**20))
    hosts, any_ip = allowed_hosts_for(args.host, args.allow_host)
    with JobQueue(args.db) as queue:
        app = create_app(queue, out_dir=args.out, token=token, run=args.run,
                         engine_factory=_engine_factory(args), folders=_folders(args, queue),
                         limits=limits, allow_origins=args.allow_origin, allowed_hosts=hosts,
                         any_ip_host=any_ip)
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{shown_host}:{args.port}/api/health"
        print(f"serving {url}" + (f"?access_token={token}" if token else "")
              + (f"\n  (or send 'Authorization: Bearer {token}')" if token else ""), file=sys.stderr,
              flush=True)
        return serve(app, host=args.host, port=args.port)


def cmd_runners(args) -> int:
    check_db_path(args.db, create=False)
    with JobQueue(args.db, policy=QueuePolicy(heartbeat_timeout=args.heartbeat_timeout)) as q:
        runners = q.runners()
        if args.json:
            for r in runners:
                print(json.dumps(r, sort_keys=True))
            return 0
        if not runners:
            print("no runner has registered (start one: ovi queue run --db ...)")
        now = q.store.now()
        for r in runners:
            serves = ",".join(r["serves"]) if r["serves"] is not None else "any"
            job = r["current_job"] if r["current_job"] is not None else "-"
            state = "" if r["live"] else "  (silent: presumed dead)"
            print(f"{r['label']:<16} {r['host']:<16} serves={serves:<24} job={job!s:<6} "
                  f"heartbeat {now - r['heartbeat_at']:5.1f}s ago{state}")
    return 0


# -- registration -------------------------------------------------------------------------------
def add_queue_parser(subparsers) -> argparse.ArgumentParser:
    queue = subparsers.add_parser("queue", help="durable job queue: submit, list, run, serve")
    sub = queue.add_subparsers(dest="queue_command", required=True)

    p = sub.add_parser("submit", help="queue one generation (n with --n); prints the job ids")
    _add_db(p)
    _add_request_options(p, with_prompt=True)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("list", help="list jobs (queued ones in run order)")
    _add_db(p)
    p.add_argument("--state", choices=STATES)
    p.add_argument("--limit", type=cli_int(1, ID_MAX, "limit"))
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print one job as JSON")
    _add_db(p)
    p.add_argument("id", type=cli_int(1, ID_MAX, "job id"))
    p.set_defaults(func=cmd_show)

    for name, func, help_text in (("cancel", cmd_cancel, "cancel jobs (running: between steps)"),
                                  ("retry", cmd_retry, "re-queue failed/cancelled/lost jobs")):
        p = sub.add_parser(name, help=help_text)
        _add_db(p)
        p.add_argument("ids", type=cli_int(1, ID_MAX, "job id"), nargs="+", metavar="ID")
        p.set_defaults(func=func)

    p = sub.add_parser("pause", help="start no new job until resume")
    _add_db(p)
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("resume", help="start jobs again")
    _add_db(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("move", help="reorder a queued job")
    _add_db(p)
    job_id = cli_int(1, ID_MAX, "job id")
    p.add_argument("id", type=job_id)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--before", type=job_id, metavar="ID")
    where.add_argument("--after", type=job_id, metavar="ID")
    where.add_argument("--priority", dest="to_priority", type=cli_int(INT64_MIN, INT64_MAX, "priority"),
                       metavar="N")
    p.set_defaults(func=cmd_move)

    p = sub.add_parser("import-csv", help="queue every row of upstream Ovi's prompt csv")
    _add_db(p)
    p.add_argument("file", help="csv with a text_prompt column and optionally image_path")
    p.add_argument("--n-times", dest="n", type=cli_int(1, 10_000, "n-times"),
                   help="runs per row (upstream's each_example_n_times, same as --n); seeds seed+0..n-1")
    _add_request_options(p, with_prompt=False)
    p.set_defaults(func=cmd_import_csv)

    p = sub.add_parser("run", help="process jobs in this process")
    _add_db(p)
    p.add_argument("--until-empty", action="store_true", help="exit 0 when no job is left")
    p.add_argument("--max-jobs", type=cli_int(1, ID_MAX, "max-jobs"))
    p.add_argument("--engine-factory", metavar="MODULE:FUNCTION",
                   help="build engines with this function (default: ovi.Engine / WorkerGroup)")
    p.add_argument("--out", help="output folder (default: the database's folder)")
    p.add_argument("--heartbeat-timeout", type=cli_number(0.1, 10**9, "seconds"), default=60.0,
                   help="seconds without a heartbeat before a running job counts as lost")
    p.add_argument("--max-attempts", type=cli_int(1, 10**6, "max-attempts"), default=3,
                   help="re-queue a lost job while it has had fewer attempts than this; then it "
                        "fails, saying how often it was lost")
    p.add_argument("--serves", action="append", metavar="CONFIG",
                   help="run only jobs of this config (name, yaml path, or 'default' for the "
                        "embedded one); repeatable; default: any job")
    p.add_argument("--label", help="this runner's name in `ovi queue runners` and clip sidecars")
    p.add_argument("--quiet", action="store_true")
    _add_folders(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runners", help="list runners: label, host, serves, current job, heartbeat")
    _add_db(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--heartbeat-timeout", type=float, default=60.0,
                   help="a runner silent this long is shown as presumed dead")
    p.set_defaults(func=cmd_runners)

    p = sub.add_parser("serve", help="REST + Socket.IO API over the queue (FastAPI + uvicorn)")
    _add_db(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=cli_int(1, 65535, "port"), default=8000)
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (or set ${TOKEN_ENV}); "
                                   f"without one a fresh token is made and printed with the URL")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token (a warning is printed): any local program can use it")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a host name clients use to reach the server (the Host header); the bound "
                        "address is always accepted (repeatable)")
    p.add_argument("--out", help="folder of clips to serve (default: the database's folder)")
    p.add_argument("--run", action="store_true", help="also run jobs in this process")
    p.add_argument("--engine-factory", metavar="MODULE:FUNCTION")
    _add_folders(p)
    p.add_argument("--allow-origin", action="append", metavar="URL",
                   help="a web page origin allowed to call the API from a browser (repeatable)")
    limits = p.add_argument_group("limits per request (a request over one gets 422 naming it)")
    defaults = ServerLimits()
    for name, help_text in (("max_steps", "denoising steps"),
                            ("max_pixels", "frame height x width"),
                            ("max_frames", "frames per clip (the config's model decides them)"),
                            ("max_prompt_chars", "characters of each prompt"),
                            ("max_clips", "clips per request (n)")):
        limits.add_argument("--" + name.replace("_", "-"), type=cli_int(1, INT64_MAX, name),
                            default=getattr(defaults, name),
                            help=f"{help_text} (default {getattr(defaults, name)})")
    limits.add_argument("--max-upload-mb", type=cli_number(1 / 1024, 2**20, "MiB"),
                        default=defaults.max_upload_bytes / 2**20,
                        help="size of an uploaded image, MiB (413 over it; default "
                             f"{defaults.max_upload_bytes / 2**20:g})")
    p.set_defaults(func=cmd_serve)
    return queue
