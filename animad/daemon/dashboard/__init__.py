"""The dashboard `animad run` serves: the status snapshot, each job's curves and log, the review packages
and the job actions, in a browser. `access` holds the safety rules, `job_view` what a job's page shows,
`server` the web app (Starlette on uvicorn, in a thread of the daemon; imported when it starts)."""
