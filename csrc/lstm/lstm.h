#pragma once
// The LSTM cell's pointwise math (Hochreiter & Schmidhuber 1997, with a forget gate), shared by
// the CPU and CUDA kernels. Gates in torch.nn.LSTM's order: input i, forget f, cell g, output o.
//
//   forward:  i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
//             c' = f c + i g,   h' = o tanh(c')
//   backward: given dh' and dc' (the gradient reaching c' from later steps),
//             dc = dc' + dh' o (1 - tanh(c')^2)
//             da_i = dc g i (1 - i),  da_f = dc c f (1 - f),  da_g = dc i (1 - g^2),
//             da_o = dh' tanh(c') o (1 - o),  and the gradient for c is dc f.
// The activated gates, c and c' are all the backward needs (tanh(c') is recomputed).
#include "common/fma_math.h"
#include "common/macros.h"

namespace fastnets {

template <typename acc_t>
struct LstmForwardValues {
  acc_t i, f, g, o, c, h;
};

template <typename acc_t>
FASTNETS_HOST_DEVICE LstmForwardValues<acc_t> lstm_forward_element(acc_t a_i, acc_t a_f, acc_t a_g, acc_t a_o,
                                                                   acc_t c_prev) {
  LstmForwardValues<acc_t> v;
  v.i = fma_sigmoid(a_i);
  v.f = fma_sigmoid(a_f);
  v.g = fma_tanh(a_g);
  v.o = fma_sigmoid(a_o);
  v.c = v.f * c_prev + v.i * v.g;
  v.h = v.o * fma_tanh(v.c);
  return v;
}

template <typename acc_t>
struct LstmBackwardValues {
  acc_t a_i, a_f, a_g, a_o, c_prev;  // gradients of the pre-activations and of c
};

template <typename acc_t>
FASTNETS_HOST_DEVICE LstmBackwardValues<acc_t> lstm_backward_element(acc_t grad_h, acc_t grad_c, acc_t i, acc_t f,
                                                                     acc_t g, acc_t o, acc_t c_prev, acc_t c) {
  const acc_t tanh_c = fma_tanh(c);
  const acc_t dc = grad_c + grad_h * o * (acc_t(1) - tanh_c * tanh_c);
  LstmBackwardValues<acc_t> d;
  d.a_i = dc * g * i * (acc_t(1) - i);
  d.a_f = dc * c_prev * f * (acc_t(1) - f);
  d.a_g = dc * i * (acc_t(1) - g * g);
  d.a_o = grad_h * tanh_c * o * (acc_t(1) - o);
  d.c_prev = dc * f;
  return d;
}

}  // namespace fastnets
