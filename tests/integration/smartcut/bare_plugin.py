"""A smartcut plugin written from seed 004 alone: confluent-kafka and the standard library, nothing
from keeneye. Its "recommendation" is deliberately simple: one segment from the first to the last
frame it saw (frame names carry their time, ``{index:07d}_{milliseconds:011d}.jpg``).

    python bare_plugin.py BOOTSTRAP ROOT [NAME]
"""

import json
import os
import shutil
import signal
import sys
import zipfile

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, root = sys.argv[1], sys.argv[2]
name = sys.argv[3] if len(sys.argv) > 3 else "bare"
producer = Producer({"bootstrap.servers": bootstrap})
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": name, "auto.offset.reset": "earliest"})


def send(topic, message):
    producer.produce(topic, json.dumps(message).encode())
    producer.flush()


def frame_times(zip_path):
    with zipfile.ZipFile(zip_path) as z:
        return [int(n.split("_")[1].split(".")[0]) / 1000 for n in z.namelist()]


running = True
signal.signal(signal.SIGTERM, lambda *_: globals().update(running=False))
send("started-plugins", {"plugin_name": name, "label": "Bare Kafka plugin", "img_size": 160})
admin = AdminClient({"bootstrap.servers": bootstrap})  # create our topic unless it exists
for created in admin.create_topics([NewTopic(f"{name}-new-files", 1)]).values():
    created.exception(10)  # wait; "already exists" is fine
consumer.subscribe([f"{name}-new-files"])
seen = {}  # request folder -> frame times
while running:
    msg = consumer.poll(0.2)
    if msg is None or msg.error():
        continue
    m = json.loads(msg.value())
    if m["status"] == "in-progress":
        path = os.path.join(root, m["last_zipped_chunk_path"])
        seen.setdefault(os.path.dirname(m["last_zipped_chunk_path"]), []).extend(frame_times(path))
        os.remove(path)  # processed files are deleted
    else:
        folder = m["zipped_chunks_path"]
        times = seen.pop(folder, [])
        for zip_name in sorted(os.listdir(os.path.join(root, folder))):
            times += frame_times(os.path.join(root, folder, zip_name))
        uid, video = folder.split("/")[:2]
        spans = [{"start": min(times), "stop": max(times)}] if times else []
        send("processed-files", {"user_id": m["user_id"], "user_request_uid": uid, "video_name": video,
                                 "plugin_name": name, "timestamps": spans})  # fmt: skip
        shutil.rmtree(os.path.join(root, uid), ignore_errors=True)
    consumer.commit(msg)
consumer.close()
send("stopped-plugins", {"plugin_name": name})
