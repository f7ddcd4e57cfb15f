"""One replica of a TFJob, run by tests/e2e/tensorflow.rs as a local process.

Environment (set by the test):
  TF_CONFIG           the pod's TF_CONFIG, exactly as the operator wrote it
  TFJOB_LOOPBACK      JSON {pod address: "127.0.0.1:port"}, one entry per pod
  TFJOB_STRATEGY      "mwms" (MultiWorkerMirroredStrategy) or "ps" (ParameterServerStrategy)
  TFJOB_CHECKPOINTS   a directory the coordinator writes its checkpoint to and the evaluator reads
  TFJOB_STEPS         how many training steps

Prints one JSON line starting with "RESULT ": what TensorFlow's TFConfigClusterResolver read
from the original TF_CONFIG (task type, index, the address at that index) and what the role
did (the losses of its steps, where variables live, the evaluator's loss). Chief and workers
of "ps" and every "ps" task only serve: the test stops them.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# TensorFlow's parameter server tutorial asks for it on every task.
os.environ["GRPC_FAIL_FAST"] = "use_caller"

import tensorflow as tf  # noqa: E402


def emit(**kv):
    print("RESULT " + json.dumps(kv, sort_keys=True), flush=True)


def loopback_tf_config(original, loopback):
    """The TF_CONFIG with every address replaced by its pod's loopback address."""
    conf = json.loads(original)

    def swap(addr):
        if addr not in loopback:
            sys.exit("TF_CONFIG names %r, which is no pod's address (pods: %s)" % (addr, sorted(loopback)))
        return loopback[addr]

    cluster = {}
    for job, tasks in conf.get("cluster", {}).items():
        if isinstance(tasks, dict):
            cluster[job] = {i: swap(a) for i, a in tasks.items()}
        else:
            cluster[job] = [swap(a) for a in tasks]
    conf["cluster"] = cluster
    return json.dumps(conf)


def data(seed, n=32):
    """Made here: y = 3x + 2 with noise, a different slice per seed."""
    g = tf.random.Generator.from_seed(seed)
    x = g.normal([n, 1])
    return x, 3.0 * x + 2.0 + 0.01 * g.normal([n, 1])


def serve(resolver):
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    emit(serving=True)
    server.join()


def save(w, b):
    ckpt = tf.train.Checkpoint(w=tf.Variable(w.read_value()), b=tf.Variable(b.read_value()))
    path = ckpt.write(os.path.join(os.environ["TFJOB_CHECKPOINTS"], "final"))
    open(os.path.join(os.environ["TFJOB_CHECKPOINTS"], "done"), "w").write(path)


def mwms(resolver, steps):
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    with strategy.scope():
        w = tf.Variable(0.0)
        b = tf.Variable(0.0)
    x, y = data(resolver.task_id + (100 if resolver.task_type == "worker" else 0))

    @tf.function
    def step():
        def replica_fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((w * x + b - y) ** 2)
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce("mean", tape.gradient(loss, [w, b]))
            w.assign_sub(0.2 * grads[0])
            b.assign_sub(0.2 * grads[1])
            return ctx.all_reduce("mean", loss)

        return strategy.run(replica_fn)

    losses = [float(strategy.experimental_local_results(step())[0]) for _ in range(steps)]
    if resolver.task_type == "chief" or (resolver.task_type == "worker" and "chief" not in resolver.cluster_spec().jobs and resolver.task_id == 0):
        save(w, b)
    emit(losses=losses, workers=strategy.extended._num_workers)


def ps(resolver, steps):
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        w = tf.Variable(0.0)
        b = tf.Variable(0.0)
    x, y = data(7)

    @tf.function
    def step():
        def replica_fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((w * x + b - y) ** 2)
            gw, gb = tape.gradient(loss, [w, b])
            w.assign_sub(0.2 * gw)
            b.assign_sub(0.2 * gb)
            return loss

        return strategy.run(replica_fn)

    losses = []
    for _ in range(steps):
        # One step at a time, so that the losses fall in order.
        losses.append(float(coordinator.schedule(step).fetch()))
    save(w, b)
    emit(losses=losses, devices=sorted({w.device, b.device}), workers=coordinator._cluster.workers.__len__())


def evaluate():
    """TensorFlow's sidecar evaluation: wait for the checkpoint, restore it, evaluate."""
    done = os.path.join(os.environ["TFJOB_CHECKPOINTS"], "done")
    import time

    while not os.path.exists(done):
        time.sleep(0.2)
    w, b = tf.Variable(-1.0), tf.Variable(-1.0)
    tf.train.Checkpoint(w=w, b=b).read(open(done).read()).assert_consumed()
    x, y = data(999)
    emit(eval_loss=float(tf.reduce_mean((w * x + b - y) ** 2)))


def main():
    original = os.environ["TF_CONFIG"]
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    try:
        own = spec.task_address(resolver.task_type, resolver.task_id)
    except (KeyError, ValueError) as e:
        own = "error: %s" % e
    emit(task_type=resolver.task_type, task_id=resolver.task_id, own_address=own, jobs=sorted(spec.jobs))

    os.environ["TF_CONFIG"] = loopback_tf_config(original, json.loads(os.environ["TFJOB_LOOPBACK"]))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    steps = int(os.environ.get("TFJOB_STEPS", "5"))
    strategy = os.environ["TFJOB_STRATEGY"]
    if resolver.task_type == "evaluator":
        evaluate()
    elif strategy == "ps" and resolver.task_type in ("worker", "ps"):
        serve(resolver)
    elif strategy == "ps":
        ps(resolver, steps)
    else:
        mwms(resolver, steps)


if __name__ == "__main__":
    main()
