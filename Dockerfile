# gantry: a multi-stage build; the runtime image holds one static-enough binary
# and runs as a non-root user with a read-only root filesystem in mind.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked -p gantry && strip target/dist/gantry

# distroless/cc: glibc and libgcc, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/gantry /usr/local/bin/gantry
USER 65532:65532
# State lives in /data: mount a volume there.
ENV GANTRY_LISTEN=0.0.0.0:7070 \
    GANTRY_METRICS_LISTEN=0.0.0.0:9464 \
    GANTRY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 7070 9464
ENTRYPOINT ["/usr/local/bin/gantry"]
CMD ["serve"]
