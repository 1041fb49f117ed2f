"""What a node's change says to the dashboards."""


def test_node_health_goes_out_compact():
    from nodes.services import compact

    util = {"cpu": 12.3456, "cpu_cores": [1.234, 99.99], "mem_used": 123456789.123,
            "gpus": [{"util": 55.55, "name": "A100"}], "procs": 301}
    assert compact(util) == {"cpu": 12.3, "cpu_cores": [1.2, 100.0], "mem_used": 123456789,
                             "gpus": [{"util": 55.5, "name": "A100"}], "procs": 301}
