#include "models/train/model_run.h"

#include <cmath>
#include <filesystem>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "models/train/run_folder.h"

namespace diffuse::train {

SafeTensors read_for_resume(const std::string& path, const std::string& format, const std::string& what) {
  SafeTensors st = read_safetensors(path);
  const std::vector<std::string> bad = nonfinite_tensors(st);
  DF_CHECK(bad.empty(), path, ": ", name_list(bad), " hold NaN or Inf values; cannot resume from it");
  auto f = st.metadata.find("format");
  DF_CHECK(f != st.metadata.end() && f->second == format, path, " is not ",
           what.find_first_of("aeiou") == 0 ? "an " : "a ", what, " checkpoint; cannot resume");
  return st;
}

AdamWOptions run_adamw(double lr, double weight_decay, int64_t warmup) {
  AdamWOptions ao;
  ao.lr = static_cast<float>(lr);
  ao.weight_decay = static_cast<float>(weight_decay);
  ao.decay_vectors = false;
  ao.warmup_steps = warmup;
  return ao;
}

int64_t restore_run(const SafeTensors& st, const std::string& path, nn::Module& net, AdamW& opt,
                    data::Batcher& batcher) {
  try {
    net.load_state(with_prefix(st.tensors, "model."));
    opt.load_state(st.tensors);
  } catch (const Error& e) {
    DF_FAIL(path, ": cannot resume: ", e.message());
  }
  auto it = st.tensors.find("trainer.state");
  DF_CHECK(it != st.tensors.end() && it->second.dtype() == DType::i64 && it->second.numel() == 3, path,
           ": trainer.state missing or malformed");
  const std::vector<int64_t> s = it->second.to_vector_i64();
  batcher.set_state(data::BatcherState{s[1], s[2]});
  return s[0];
}

std::ofstream open_run_log(const std::string& path, bool resuming, const std::string& header) {
  const bool fresh = !resuming || !std::filesystem::exists(path);
  std::ofstream log(path, fresh ? std::ios::trunc : std::ios::app);
  DF_CHECK(log.good(), "cannot write ", path);
  if (fresh) log << header << '\n';
  return log;
}

void copy_weights(const NamedParams& from, const NamedParams& to) {
  DF_CHECK(from.size() == to.size(), "copy_weights: ", from.size(), " parameters into ", to.size());
  for (size_t i = 0; i < from.size(); ++i) {
    DF_CHECK(from[i].first == to[i].first, "copy_weights: parameter ", from[i].first, " into ", to[i].first);
    ag::Var dst = to[i].second;
    dst.value().copy_(from[i].second.value());
  }
}

double optimizer_step(const ag::Var& loss, const NamedParams& params, AdamW& opt, double grad_clip, int64_t step,
                      const std::string& what, const std::string& ckpt, const NamedParams* replica) {
  const double lv = loss.value().item();
  double gnorm = NAN;
  if (std::isfinite(lv)) {
    ag::backward(loss);
    if (replica) {
      DF_CHECK(replica->size() == params.size(), "optimizer_step: the replica has ", replica->size(),
               " parameters, the model ", params.size());
      for (size_t i = 0; i < params.size(); ++i) {
        ag::Var src = (*replica)[i].second, dst = params[i].second;
        DF_CHECK((*replica)[i].first == params[i].first, "optimizer_step: replica parameter ", (*replica)[i].first,
                 " against ", params[i].first);
        dst.zero_grad();
        if (src.has_grad()) dst.set_grad(src.grad().to(Device::cpu()));
        src.zero_grad();
      }
    }
    // 1e30: the norm is still measured (for the log), never reached.
    gnorm = clip_grad_norm(params, grad_clip > 0 ? grad_clip : 1e30);
    if (std::isfinite(gnorm)) opt.step();
  } else {
    ag::clear_tape();
  }
  opt.zero_grad();
  if (replica)
    for (const auto& [name, p] : *replica) {
      ag::Var v = p;
      v.zero_grad();
    }
  DF_CHECK(std::isfinite(lv) && std::isfinite(gnorm), "the ", what, "'s loss or gradient was not finite at step ",
           step + 1, "; lower --lr. The last checkpoint (", ckpt, ") holds finite weights");
  return gnorm;
}

void write_run_checkpoint(const std::string& path, const nn::Module& net, const AdamW& opt,
                          const data::Batcher& batcher, int64_t step, std::map<std::string, std::string> metadata) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, var] : net.named_parameters()) {
    DF_CHECK(all_finite(var.value()), "parameter ", name, " is not finite at step ", step,
             ": no checkpoint is written (the previous one is kept)");
    tensors.emplace_back("model." + name, var.value());
  }
  for (auto& [name, t] : opt.state()) tensors.emplace_back(name, t);
  const data::BatcherState bs = batcher.state();
  tensors.emplace_back("trainer.state", Tensor::from_vector_i64({step, bs.epoch, bs.position}, {3}));
  metadata["step"] = std::to_string(step);
  write_safetensors_atomic(path, tensors, metadata);
}

}  // namespace diffuse::train
