# fedpipe: one image for every stage; the command picks the stage.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/fedpipe ./cmd/fedpipe

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/fedpipe /usr/local/bin/fedpipe
USER 65532:65532
ENTRYPOINT ["fedpipe"]
