// resbm-launch: the pipeline as one process per stage over TCP on this host. Starts S
// resbm-train processes (stage k listens for k-1 and connects to k+1 on loopback ports),
// passes them every other flag, waits for them, and prints per stage the bytes sent and
// received, the measured compression ratio and the share of step time spent waiting on
// the link, then one `RESULT {json}` line for the whole run.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "resbm/io/json.hpp"

using namespace resbm;

namespace {

struct Child {
  pid_t pid = -1;
  int out = -1;  // read end of the child's stdout
  std::string buffer, result;
  int status = 0;
  bool done = false;
};

// A port the kernel considers free right now (bound to port 0, then released).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  RESBM_CHECK(fd >= 0, cat("socket(): ", std::strerror(errno)), "check that this host allows TCP sockets");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    fail(cat("cannot find a free loopback port: ", std::strerror(errno)), "pass --base-port P explicitly");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

Child spawn(const std::string& exe, const std::vector<std::string>& args) {
  int p[2];
  RESBM_CHECK(::pipe(p) == 0, cat("pipe(): ", std::strerror(errno)), "raise the open-file limit");
  Child c;
  c.pid = ::fork();
  RESBM_CHECK(c.pid >= 0, cat("fork(): ", std::strerror(errno)), "free memory or raise the process limit");
  if (c.pid == 0) {
    ::dup2(p[1], 1);
    ::close(p[0]);
    ::close(p[1]);
    std::vector<char*> argv{const_cast<char*>(exe.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "resbm-launch: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(p[1]);
  c.out = p[0];
  return c;
}

int run(int argc, char** argv) {
  int stages = 4;
  int base_port = 0;
  std::string host = "127.0.0.1", tls_dir;
  std::vector<std::string> pass;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) {
      RESBM_CHECK(i + 1 < argc, cat(flag, " needs a value"), "run resbm-launch --help");
      return std::string(argv[++i]);
    };
    if (a == "--help" || a == "-h") {
      std::printf(
          "resbm-launch — train a pipeline as one resbm-train process per stage over TCP on this host\n\n"
          "usage: resbm-launch [--stages S] [--base-port P] [--host H] [resbm-train flags...]\n\n"
          "  --stages S      number of stage processes [default: 4]\n"
          "  --base-port P   stage k listens on P+k (0 = free ports picked by the kernel) [default: 0]\n"
          "  --host H        address the stages bind and connect to [default: 127.0.0.1]\n"
          "  --tls-dir D     mutual TLS with D/ca.crt and D/stage-K.crt/.key (examples/make_certs.sh D S)\n"
          "Every other flag goes to each resbm-train (see resbm-train --help); the default codec is\n"
          "resbm (rank 2), --micro-batches defaults to 4 and --threads to the host's cores divided\n"
          "among the stages.\n"
          "Ends with a line RESULT {json} for the whole run.\n");
      return 0;
    } else if (a == "--stages") {
      stages = std::stoi(value("--stages"));
    } else if (a == "--base-port") {
      base_port = std::stoi(value("--base-port"));
    } else if (a == "--host") {
      host = value("--host");
    } else if (a == "--tls-dir") {
      tls_dir = value("--tls-dir");
    } else if (a == "--stage" || a == "--listen" || a == "--next" || a.rfind("--tls-", 0) == 0) {
      fail(cat(a, " is set by resbm-launch for each stage"), cat("drop ", a, " from the command line"));
    } else {
      pass.push_back(a);
    }
  }
  // Unless told otherwise, the stage processes share this host's cores instead of each
  // starting one thread per core.
  auto given = [&](const std::string& flag) {
    for (const auto& a : pass)
      if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
    return false;
  };
  const bool threads_given = given("--threads");
  // A pipeline with one micro-batch per step leaves all but one stage idle at any time.
  if (!given("--micro-batches")) pass.insert(pass.end(), {"--micro-batches", "4"});
  if (!threads_given) {
    const unsigned hw = std::thread::hardware_concurrency();
    pass.insert(pass.end(), {"--threads", std::to_string(std::max(1, int(hw ? hw : 1) / std::max(stages, 1)))});
  }
  RESBM_CHECK(stages >= 2, cat("--stages ", stages, " is fewer than 2"),
              "a launched pipeline has at least 2 stages; run resbm-train alone for one");
  const std::string exe = (std::filesystem::canonical("/proc/self/exe").parent_path() / "resbm-train").string();
  RESBM_CHECK(std::filesystem::exists(exe), cat("resbm-train not found next to resbm-launch (", exe, ")"),
              "build both targets into the same directory");
  std::vector<int> ports;
  for (int k = 0; k < stages; ++k) ports.push_back(base_port > 0 ? base_port + k : free_port());
  const std::string run_id = cat("launch-", ::getpid());

  std::vector<Child> children;
  for (int k = 0; k < stages; ++k) {
    std::vector<std::string> args{"--stages", std::to_string(stages), "--stage", std::to_string(k), "--run-id", run_id};
    if (k > 0) args.insert(args.end(), {"--listen", cat(host, ":", ports[size_t(k)])});
    if (k + 1 < stages) args.insert(args.end(), {"--next", cat(host, ":", ports[size_t(k + 1)])});
    if (!tls_dir.empty()) {
      const auto d = std::filesystem::path(tls_dir);
      args.insert(args.end(), {"--tls-ca", (d / "ca.crt").string(), "--tls-cert", (d / cat("stage-", k, ".crt")).string(),
                               "--tls-key", (d / cat("stage-", k, ".key")).string()});
    }
    args.insert(args.end(), pass.begin(), pass.end());
    children.push_back(spawn(exe, args));
  }

  // Read every child's stdout until it closes; keep RESULT lines, echo the rest.
  size_t open = children.size();
  while (open > 0) {
    std::vector<pollfd> fds;
    for (auto& c : children)
      if (c.out >= 0) fds.push_back({c.out, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) fail(cat("poll(): ", std::strerror(errno)), "");
    for (auto& c : children) {
      if (c.out < 0) continue;
      char buf[4096];
      pollfd probe{c.out, POLLIN, 0};
      if (::poll(&probe, 1, 0) <= 0) continue;
      const ssize_t n = ::read(c.out, buf, sizeof buf);
      if (n <= 0) {
        ::close(c.out);
        c.out = -1;
        --open;
        continue;
      }
      c.buffer.append(buf, size_t(n));
      for (size_t nl; (nl = c.buffer.find('\n')) != std::string::npos;) {
        std::string line = c.buffer.substr(0, nl);
        c.buffer.erase(0, nl + 1);
        if (line.rfind("RESULT ", 0) == 0)
          c.result = line.substr(7);
        else
          std::printf("%s\n", line.c_str());
      }
    }
  }
  int failed = -1;
  for (size_t k = 0; k < children.size(); ++k) {
    ::waitpid(children[k].pid, &children[k].status, 0);
    const bool ok = WIFEXITED(children[k].status) && WEXITSTATUS(children[k].status) == 0;
    if (!ok && failed < 0) failed = int(k);
  }
  if (failed >= 0) {
    for (size_t k = 0; k < children.size(); ++k) {
      const int st = children[k].status;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) continue;
      std::fprintf(stderr, "resbm-launch: stage %zu %s %d\n", k, WIFSIGNALED(st) ? "was killed by signal" : "exited with",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    return 1;
  }

  // The run's result: losses from the last stage, traffic summed over stages.
  std::vector<io::Json> results;
  for (size_t k = 0; k < children.size(); ++k) {
    RESBM_CHECK(!children[k].result.empty(), cat("stage ", k, " printed no RESULT line"),
                "run that stage's command by hand to see why");
    results.push_back(io::Json::parse(children[k].result));
  }
  double fwd = 0, bwd = 0, dense = 0, tps = 1e300, params = 0;
  io::Json per_stage = io::Json::array();
  std::fprintf(stderr, "\n%-6s %14s %14s %10s %10s\n", "stage", "bytes sent", "bytes recv", "ratio", "link wait");
  for (size_t k = 0; k < results.size(); ++k) {
    const io::Json& r = results[k];
    const io::Json& st = r.at("per_stage").as_array().at(0);
    const double f = r.at("wire_bytes_forward").as_number(), b = r.at("wire_bytes_backward").as_number(),
                 d = r.at("wire_dense_bytes").as_number();
    fwd += f;
    bwd += b;
    dense += d;
    tps = std::min(tps, r.at("tokens_per_s").as_number());
    params += st.at("params").as_number();
    io::Json s = st;
    s.set("compression_ratio", f + b > 0 ? d / (f + b) : 0.0);
    per_stage.push_back(s);
    std::fprintf(stderr, "%-6zu %14.0f %14.0f %9.1fx %9.1f%%\n", k, st.at("bytes_sent").as_number(),
                 st.at("bytes_received").as_number(), f + b > 0 ? d / (f + b) : 0.0,
                 100.0 * st.at("wait_share").as_number());
  }
  io::Json out = results.back();
  out.set("tokens_per_s", tps);
  out.set("stage", -1);
  out.set("wire_bytes_forward", fwd);
  out.set("wire_bytes_backward", bwd);
  out.set("wire_dense_bytes", dense);
  out.set("compression_ratio", fwd + bwd > 0 ? dense / (fwd + bwd) : 0.0);
  // Dense bf16 costs 2·d bytes per token each way, so dense / 4d is the tokens crossed.
  const double d_model = out.at("d_model").as_number();
  out.set("wire_bytes_per_token", dense > 0 ? (fwd + bwd) * 4.0 * d_model / dense : 0.0);
  out.set("params", params);
  out.set("per_stage", per_stage);
  out.set("transport", tls_dir.empty() ? "tcp" : "tls");
  std::printf("RESULT %s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resbm-launch: error: %s\n", e.what());
    return 1;
  }
}
