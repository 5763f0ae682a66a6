"""Remote workers: Easel's jobs on Ray actors, one per GPU, behind the one front end (see README, "Many GPUs").

`process.WorkerProcess` is what runs in each Ray worker process (a Runtime of its own); `ray_pool` is the
front end's side: `RayWorker` (one actor as the queue's `Worker`) and `RayPool` (starts or joins the
cluster, keeps one worker per GPU, replaces lost ones). Ray is imported only here and only when
`--workers ray` is given, so Easel runs without it installed.
"""
