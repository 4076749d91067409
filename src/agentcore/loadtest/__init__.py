"""``agentcore loadtest``: run the Locust scenarios of ``tests/load`` and judge them.

Modules, one concept each:

* :mod:`.targets`   the seed's target tables (target and critical levels), TOML overrides, verdicts;
* :mod:`.scenarios` the catalogue: scenario file, gateway settings, helpers it needs;
* :mod:`.sampler`   CPU and RSS of a process tree from ``/proc`` (gateway and Locust);
* :mod:`.scrape`    reading and parsing the gateway's ``/metrics``;
* :mod:`.latency`   every request's latency, recorded by :mod:`.locust_plugin` inside Locust;
* :mod:`.wrk`       raw HTTP throughput with wrk (above what one Locust process can drive);
* :mod:`.figures`   the figures of one run, each with the tool it came from;
* :mod:`.report`    summary JSON, verdict table, HTML with inline SVG charts;
* :mod:`.compare`   baseline against current run, per endpoint;
* :mod:`.runner`    the run itself: processes, warm-up, Locust, samplers, result folder;
* :mod:`.command`   the ``agentcore loadtest`` sub-commands.

docs/load-testing.md is the guide.
"""
