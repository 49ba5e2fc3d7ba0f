"""A stand-in for Flower's Grid and client replies, to drive a strategy's rounds without any runtime."""
import numpy as np

flwr_app = __import__("pytest").importorskip("flwr.app")


class FakeGrid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def arrays(state: dict):
    record = flwr_app.ArrayRecord()
    for k, v in state.items():
        record[k] = flwr_app.Array.from_numpy_ndarray(np.ascontiguousarray(np.asarray(v)))
    return record


def reply(message, state: dict, num_examples: int = 10):
    """The reply a client sends to ``message`` with its trained arrays ``state``."""
    content = flwr_app.RecordDict({"arrays": arrays(state),
                                   "metrics": flwr_app.MetricRecord({"num-examples": num_examples})})
    return flwr_app.Message(content=content, reply_to=message)
