# syntax=docker/dockerfile:1
# Your own code in a cluster: the worker image plus friedman.py on PYTHONPATH. Build it from the examples folder,
#   docker build -f friedman.Dockerfile -t registry.example.com/friedman-worker:1 .
# push it, and name it in the task: `spec.image: registry.example.com/friedman-worker:1` (friedman-regression.yaml).
FROM ghcr.io/fedtask/worker:0.1.0
# Packages your code imports go into the image's environment (/opt/fedtask, owned by root), e.g.:
#   USER root
#   RUN pip install --no-cache-dir your-package==1.2.3
COPY friedman.py /opt/fedtask-user/
ENV PYTHONPATH=/opt/fedtask-user
USER 10001:10001
