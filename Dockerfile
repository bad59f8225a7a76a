# The gateway image (CPU: the router runs on CPU; experts are separate vLLM containers).
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" scripts/install.sh \
    && ln -s /app/.venv/bin/expertmesh /usr/local/bin/expertmesh
ENV HF_HUB_OFFLINE=1
EXPOSE 8080
CMD ["expertmesh", "serve", "--config", "/app/deploy/compose-gpu.yaml"]
